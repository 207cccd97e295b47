//! The per-event entry point: cgroup id → cgroup path → container → its
//! containerd metadata, each step cached, so a repeat lookup is two hash
//! probes under uncontended read locks.
use std::sync::Arc;

use super::{
    cgroup_path::Runtime,
    cgroups::{CgroupEntry, CgroupPaths},
    container_cache::{Lookup, Unknown},
    containerd::ContainerdMetadata,
    metadata::ContainerMeta,
};

/// What is known about a cgroup's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerLookup {
    /// The cgroup id could not be resolved to a path (yet).
    CgroupUnknown,
    /// A host cgroup: not a container.
    Host,
    Known(Arc<ContainerMeta>),
    /// A containerd container whose metadata is not (yet) available.
    Unknown(Unknown),
    /// A container of a runtime we have no metadata source for (CRI-O,
    /// Docker, Podman, or containerd without a client configured).
    NoSource,
}

#[derive(Clone, Debug)]
pub struct Identity {
    /// The cgroup path and the container id parsed from it.
    pub cgroup: Option<Arc<CgroupEntry>>,
    pub container: ContainerLookup,
}

impl Identity {
    /// Container id from the cgroup path, whether or not metadata is known.
    pub fn container_id(&self) -> Option<&str> {
        Some(&self.cgroup.as_ref()?.container.as_ref()?.id)
    }

    pub fn metadata(&self) -> Option<&Arc<ContainerMeta>> {
        match &self.container {
            ContainerLookup::Known(meta) => Some(meta),
            _ => None,
        }
    }
}

pub struct IdentityResolver {
    cgroups: CgroupPaths,
    containerd: Option<Arc<ContainerdMetadata>>,
}

impl IdentityResolver {
    pub fn new(cgroups: CgroupPaths, containerd: Option<Arc<ContainerdMetadata>>) -> Self {
        IdentityResolver {
            cgroups,
            containerd,
        }
    }

    pub fn cgroups(&self) -> &CgroupPaths {
        &self.cgroups
    }

    pub fn containerd(&self) -> Option<&Arc<ContainerdMetadata>> {
        self.containerd.as_ref()
    }

    /// Identity for an event's cgroup id; `tgid` helps resolve a cgroup
    /// created since the last walk. Never waits on containerd.
    pub fn resolve(&self, cgroup_id: u64, tgid: u32) -> Identity {
        let Some(cgroup) = self.cgroups.lookup(cgroup_id, Some(tgid)) else {
            return Identity {
                cgroup: None,
                container: ContainerLookup::CgroupUnknown,
            };
        };
        let container = match (&cgroup.container, &self.containerd) {
            (None, _) => ContainerLookup::Host,
            (Some(found), Some(containerd))
                if found.runtime == Runtime::Containerd
                    && found
                        .namespace
                        .as_deref()
                        .is_none_or(|ns| ns == containerd.namespace()) =>
            {
                match containerd.lookup(&found.id) {
                    Lookup::Known(meta) => ContainerLookup::Known(meta),
                    Lookup::Unknown(why) => ContainerLookup::Unknown(why),
                }
            }
            (Some(_), _) => ContainerLookup::NoSource,
        };
        Identity {
            cgroup: Some(cgroup),
            container,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Instant};

    use super::*;
    use crate::identity::{
        cgroups::CgroupPathsConfig,
        containerd::ContainerdConfig,
        metadata::{ContainerKind, PodMeta},
    };

    const ID: &str = "3f4b2a1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    fn resolver() -> (IdentityResolver, Arc<ContainerdMetadata>) {
        let cgroups = CgroupPaths::new("/nonexistent".into(), CgroupPathsConfig::default());
        let uid = "0c6b7e5f-1234-4abc-9def-0123456789ab";
        cgroups.insert_for_test(10, format!("/kubepods/burstable/pod{uid}/{ID}"));
        cgroups.insert_for_test(11, "/system.slice/sshd.service".into());
        cgroups.insert_for_test(12, format!("/system.slice/crio-{ID}.scope"));
        cgroups.insert_for_test(13, "/other-ns/mycontainer".into());
        let (containerd, _worker) = ContainerdMetadata::new(ContainerdConfig::default()).unwrap();
        containerd.cache().insert(Arc::new(ContainerMeta {
            id: ID.into(),
            name: "nginx".into(),
            kind: ContainerKind::Container,
            image: Some("nginx:1.25".into()),
            image_ref: None,
            pod: Some(PodMeta {
                name: Some("web-0".into()),
                ..PodMeta::default()
            }),
            labels: BTreeMap::new(),
            host_network: Some(false),
        }));
        (
            IdentityResolver::new(cgroups, Some(containerd.clone())),
            containerd,
        )
    }

    #[test]
    fn resolves_each_kind_of_cgroup() {
        let (resolver, _containerd) = resolver();
        let known = resolver.resolve(10, 1);
        assert_eq!(known.container_id(), Some(ID));
        assert_eq!(known.metadata().unwrap().name, "nginx");
        assert_eq!(resolver.resolve(11, 1).container, ContainerLookup::Host);
        assert_eq!(resolver.resolve(12, 1).container, ContainerLookup::NoSource);
        assert_eq!(resolver.resolve(13, 1).container, ContainerLookup::NoSource);
        let missing = resolver.resolve(99, u32::MAX);
        assert_eq!(
            (missing.container, missing.cgroup),
            (ContainerLookup::CgroupUnknown, None)
        );
    }

    /// `cargo test --release -p egret --lib identity::resolver -- --ignored --nocapture`
    #[test]
    #[ignore = "timing measurement; run explicitly"]
    fn cached_lookup_cost() {
        let (resolver, containerd) = resolver();
        const N: u32 = 2_000_000;
        let start = Instant::now();
        let mut known = 0u32;
        for i in 0..N {
            let identity = resolver.resolve(std::hint::black_box(10), i);
            known += u32::from(identity.metadata().is_some());
        }
        let per_lookup = start.elapsed().as_nanos() as f64 / f64::from(N);
        assert_eq!(known, N);
        assert_eq!(
            containerd
                .stats()
                .hits
                .load(std::sync::atomic::Ordering::Relaxed),
            u64::from(N)
        );
        println!("cached cgroup id -> container metadata: {per_lookup:.1} ns/lookup");
        // Unoptimised builds are several times slower; the budget is for
        // the release build the agent ships as.
        if !cfg!(debug_assertions) {
            assert!(per_lookup < 1_000.0, "{per_lookup} ns per cached lookup");
        }
    }
}
