//! `aya::Pod` for every type the agent reads from or writes to a map or
//! the ring buffer (`user` feature only: the eBPF side needs none).
// SAFETY (each): plain-old-data, repr(C), no padding bytes left
// implicit; the size assertions in lib.rs pin the layout.
// SAFETY: as above.
unsafe impl aya::Pod for super::HookCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for super::EgressEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for super::ProcState {}
// SAFETY: as above.
unsafe impl aya::Pod for super::QuarantineTarget {}
// SAFETY: as above.
unsafe impl aya::Pod for super::QuarantineCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for super::SocketEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for super::RawFlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for super::RawFlow {}
// SAFETY: as above.
unsafe impl aya::Pod for super::RawOwner {}
// SAFETY: as above.
unsafe impl aya::Pod for super::ExeOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for super::ConnectPending {}
// SAFETY: as above.
unsafe impl aya::Pod for super::ConnectSlot {}
// SAFETY: as above.
unsafe impl aya::Pod for super::ConnectResultEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for super::FlowCounters {}
