//! Sink stages: where decoded events leave the agent.
pub mod alert;
pub mod audit;
pub mod webhook;
