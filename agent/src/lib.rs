//! Egret's agent: loads the kernel hooks and runs the event pipeline
//! (kernel → source → decode → enrich → evaluate → outputs).
pub mod advise;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod health;
pub mod identity;
pub mod kernel;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod numfmt;
pub mod outputs;
pub mod pipeline;
pub mod quarantine;
pub mod ruleset;
pub mod run;
pub mod secret;
pub mod sync;
pub mod timefmt;
pub mod tools;
pub mod watchdog;
