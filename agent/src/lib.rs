//! Egret's agent: loads the kernel hooks and runs the event pipeline
//! (source → decode → sinks).
pub mod advise;
pub mod alert;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod enrich;
pub mod event;
pub mod health;
pub mod identity;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod numfmt;
pub mod rules;
pub mod run;
pub mod sinks;
pub mod source;
pub mod timefmt;
