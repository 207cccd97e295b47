//! Host-side library target of the eBPF crate. It is empty on purpose: the
//! agent takes a build-dependency on this crate so that cargo rebuilds the
//! agent (and so re-runs aya-build) whenever the kernel programs change.
#![no_std]
