//! Who made a connection: cgroup → container → pod, uid → user name.
//!
//! Each part works on its own; [`resolver::IdentityResolver`] combines the
//! per-event ones behind a single cheap lookup.
pub mod cgroup_path;
pub mod cgroups;
pub mod container_cache;
pub mod containerd;
pub mod metadata;
pub mod netns;
pub mod resolver;
pub mod users;
