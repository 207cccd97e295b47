//! Egret's agent: loads the kernel hooks and runs the event pipeline
//! (kernel → source → decode → enrich → evaluate → outputs).
pub mod cli;
pub mod config;
pub mod health;
pub mod identity;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod numfmt;
pub mod outputs;
pub mod pipeline;
pub mod ruleset;
pub mod run;
pub mod sync;
pub mod timefmt;
pub mod tools;
