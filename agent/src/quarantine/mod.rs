//! Respond: quarantining a workload's egress in the kernel on request (the
//! control API), from a mounted quarantine list, or from a rule's action.
//! The kernel side is `kernel::quarantine` and the eBPF `quarantine.rs`;
//! docs/quarantine.md is the operator's view.
pub mod api;
pub mod manager;
pub mod model;
pub mod target;

pub use manager::{Manager, QuarantineError};
