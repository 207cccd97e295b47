//! The event pipeline, in the order a record flows through it: the source
//! drains the kernel ring buffer, decode turns records into typed values,
//! enrich attaches identity, and evaluate matches rules and hands alerts and
//! events to the outputs.
pub mod decode;
pub mod enrich;
pub mod evaluate;
pub mod source;
