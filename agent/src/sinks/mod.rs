//! Sink stages: where decoded events leave the agent.
pub mod audit;
pub mod webhook;
