//! From a target (container id, pod uid, namespace + pod name) to the one
//! cgroup directory the enforcing programs attach to, and the refusals that
//! keep a quarantine from cutting off the node or Egret itself.
//!
//! Only directories strictly below the agent's own attach point
//! (`kernel.cgroup`) are ever candidates, so the cgroup2 root, and in tests
//! anything outside the test cgroup, can never be quarantined.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::identity::{
    cgroup_path::{self, ContainerRef},
    container_cache::Lookup,
    containerd::ContainerdMetadata,
};

use super::model::TargetSpec;

/// Directories visited per resolution at most (a node has a few thousand).
const MAX_DIRS: usize = 200_000;
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{0}: no such workload on this node")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
}

/// A resolved target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub dir: PathBuf,
    /// Kubernetes namespace when known (request or containerd metadata).
    pub namespace: Option<String>,
}

pub struct TargetResolver {
    /// cgroup2 mount point (paths in /proc/*/cgroup are relative to it).
    mount: PathBuf,
    /// The agent's attach point: targets live strictly below it.
    scope: PathBuf,
    /// Egret's own cgroup (absolute); never quarantined, nor its ancestors.
    own: Option<PathBuf>,
    containerd: Option<Arc<ContainerdMetadata>>,
}

impl TargetResolver {
    pub fn new(
        mount: PathBuf,
        scope: PathBuf,
        containerd: Option<Arc<ContainerdMetadata>>,
    ) -> TargetResolver {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| {
                crate::identity::cgroups::unified_path(&text)
                    .map(|p| mount.join(p.trim_start_matches('/')))
            });
        TargetResolver {
            mount,
            scope,
            own,
            containerd,
        }
    }

    pub fn resolve(&self, target: &TargetSpec, force: bool) -> Result<Resolved, TargetError> {
        let dirs = self.walk();
        let found = match target {
            TargetSpec::Container { container_id } => {
                find_container(&dirs, container_id).map(|dir| Resolved {
                    namespace: self.namespace_of(&dirs, &dir),
                    dir,
                })
            }
            TargetSpec::PodUid { pod_uid } => find_pod(&dirs, pod_uid).map(|dir| Resolved {
                namespace: self.namespace_of(&dirs, &dir),
                dir,
            }),
            TargetSpec::Pod { namespace, pod } => self.find_named_pod(&dirs, namespace, pod),
        };
        let resolved = found.ok_or_else(|| TargetError::NotFound(target.to_string()))?;
        self.check(&resolved, force)?;
        Ok(resolved)
    }

    fn check(&self, resolved: &Resolved, force: bool) -> Result<(), TargetError> {
        if !resolved.dir.starts_with(&self.scope) || resolved.dir == self.scope {
            return Err(TargetError::Refused(
                "refusing to quarantine the host itself (the target resolves to the node's own cgroup)"
                    .into(),
            ));
        }
        if let Some(own) = &self.own
            && own.starts_with(&resolved.dir)
        {
            return Err(TargetError::Refused(
                "refusing to quarantine Egret's own pod (the target contains the agent)".into(),
            ));
        }
        if resolved.namespace.as_deref() == Some("kube-system") && !force {
            return Err(TargetError::Refused(
                "refusing to quarantine a kube-system workload without \"force\": true".into(),
            ));
        }
        Ok(())
    }

    /// Every directory below the scope with the container it names, as
    /// (absolute dir, depth, parse of its path relative to the mount).
    fn walk(&self) -> Vec<(PathBuf, usize, Option<ContainerRef>)> {
        let mut out = Vec::new();
        let mut stack = vec![(self.scope.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if out.len() >= MAX_DIRS {
                tracing::warn!(
                    max = MAX_DIRS,
                    "cgroup tree too large; target search truncated"
                );
                break;
            }
            let relative = dir
                .strip_prefix(&self.mount)
                .map(|rel| format!("/{}", rel.display()))
                .unwrap_or_default();
            out.push((dir.clone(), depth, cgroup_path::parse(&relative)));
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        out
    }

    fn namespace_of(
        &self,
        dirs: &[(PathBuf, usize, Option<ContainerRef>)],
        dir: &Path,
    ) -> Option<String> {
        let containerd = self.containerd.as_ref()?;
        dirs.iter()
            .filter(|(d, _, _)| d.starts_with(dir))
            .filter_map(|(_, _, c)| c.as_ref())
            .find_map(|c| match containerd.lookup(&c.id) {
                Lookup::Known(meta) => meta.pod.as_ref()?.namespace.clone(),
                _ => None,
            })
    }

    fn find_named_pod(
        &self,
        dirs: &[(PathBuf, usize, Option<ContainerRef>)],
        namespace: &str,
        pod: &str,
    ) -> Option<Resolved> {
        let containerd = self.containerd.as_ref()?;
        let uid = dirs
            .iter()
            .filter_map(|(_, _, c)| c.as_ref())
            .find_map(|c| match containerd.lookup(&c.id) {
                Lookup::Known(meta) => {
                    let p = meta.pod.as_ref()?;
                    (p.namespace.as_deref() == Some(namespace) && p.name.as_deref() == Some(pod))
                        .then(|| p.uid.clone())?
                }
                _ => None,
            })?;
        find_pod(dirs, &uid).map(|dir| Resolved {
            dir,
            namespace: Some(namespace.to_owned()),
        })
    }
}

/// The container's own directory: the shallowest one naming it (a
/// container's sub-cgroups name it too). Short ids (12+) match a prefix.
fn find_container(dirs: &[(PathBuf, usize, Option<ContainerRef>)], id: &str) -> Option<PathBuf> {
    let matches = |c: &ContainerRef| &*c.id == id || (id.len() >= 12 && c.id.starts_with(id));
    dirs.iter()
        .filter(|(_, _, c)| c.as_ref().is_some_and(matches))
        .min_by_key(|(_, depth, _)| *depth)
        .map(|(dir, _, _)| dir.clone())
}

/// The pod's directory: the one whose own name carries the uid.
fn find_pod(dirs: &[(PathBuf, usize, Option<ContainerRef>)], uid: &str) -> Option<PathBuf> {
    dirs.iter()
        .filter(|(dir, _, _)| {
            dir.file_name()
                .and_then(|n| n.to_str())
                .and_then(cgroup_path::pod_uid)
                .is_some_and(|found| &*found == uid)
        })
        .min_by_key(|(_, depth, _)| *depth)
        .map(|(dir, _, _)| dir.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d6f3d4e-1111-4222-8333-444455556666";
    const ID: &str = "4c8d2b2a1f0e9d8c7b6a5f4e3d2c1b0a4c8d2b2a1f0e9d8c7b6a5f4e3d2c1b0a";

    /// A fake cgroup tree in a temp directory (the resolver only reads
    /// directory names, so a plain tree stands in for cgroupfs here).
    fn tree(tag: &str) -> (PathBuf, TargetResolver) {
        let root = std::env::temp_dir().join(format!("egret-q-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let scope = root.join("scope");
        let pod = scope.join(format!("kubepods/pod{UID}"));
        std::fs::create_dir_all(pod.join(ID).join("sub")).unwrap();
        std::fs::create_dir_all(scope.join("system.slice")).unwrap();
        let resolver = TargetResolver {
            mount: root.clone(),
            scope,
            own: Some(root.join("scope/system.slice")),
            containerd: None,
        };
        (root, resolver)
    }

    #[test]
    fn resolves_containers_and_pods_to_their_own_directory() {
        let (root, resolver) = tree("resolve");
        let pod_dir = root.join(format!("scope/kubepods/pod{UID}"));
        let by_id = resolver
            .resolve(
                &TargetSpec::Container {
                    container_id: ID.into(),
                },
                false,
            )
            .unwrap();
        assert_eq!(by_id.dir, pod_dir.join(ID));
        let by_short = resolver
            .resolve(
                &TargetSpec::Container {
                    container_id: ID[..12].into(),
                },
                false,
            )
            .unwrap();
        assert_eq!(by_short.dir, pod_dir.join(ID));
        let by_uid = resolver
            .resolve(
                &TargetSpec::PodUid {
                    pod_uid: UID.into(),
                },
                false,
            )
            .unwrap();
        assert_eq!(by_uid.dir, pod_dir);
        assert!(matches!(
            resolver.resolve(
                &TargetSpec::PodUid {
                    pod_uid: "nope".into()
                },
                false
            ),
            Err(TargetError::NotFound(_))
        ));
        // Without containerd, names cannot be resolved.
        assert!(matches!(
            resolver.resolve(
                &TargetSpec::Pod {
                    namespace: "ns".into(),
                    pod: "web".into()
                },
                false
            ),
            Err(TargetError::NotFound(_))
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_the_host_and_egret_itself() {
        let (root, mut resolver) = tree("refuse");
        let scope = resolver.scope.clone();
        let host = Resolved {
            dir: scope.clone(),
            namespace: None,
        };
        assert!(matches!(
            resolver.check(&host, true),
            Err(TargetError::Refused(_))
        ));
        let outside = Resolved {
            dir: root.clone(),
            namespace: None,
        };
        assert!(matches!(
            resolver.check(&outside, true),
            Err(TargetError::Refused(_))
        ));
        resolver.own = Some(scope.join(format!("kubepods/pod{UID}/{ID}")));
        let own_pod = Resolved {
            dir: scope.join(format!("kubepods/pod{UID}")),
            namespace: None,
        };
        let refused = resolver.check(&own_pod, true).unwrap_err();
        assert!(refused.to_string().contains("Egret's own pod"), "{refused}");
        let system = Resolved {
            dir: scope.join("kubepods/x"),
            namespace: Some("kube-system".into()),
        };
        assert!(
            resolver
                .check(&system, false)
                .unwrap_err()
                .to_string()
                .contains("force")
        );
        assert!(resolver.check(&system, true).is_ok());
        std::fs::remove_dir_all(root).unwrap();
    }
}
