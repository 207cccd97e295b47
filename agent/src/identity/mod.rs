//! Who made a connection: cgroup → container → pod, uid → user name.
//!
//! Each part works on its own; [`resolver::IdentityResolver`] combines the
//! cgroup and container steps behind a single cheap lookup, and
//! [`IdentitySources`] is everything the enrich stage asks.
pub mod cgroup_path;
pub mod cgroups;
pub mod container_cache;
pub mod containerd;
pub mod metadata;
pub mod netns;
pub mod resolver;
pub mod service_account;
mod sources;
pub mod users;

pub use sources::IdentitySources;
