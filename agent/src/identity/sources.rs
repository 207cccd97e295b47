//! The identity sources the enrich stage uses, wired together: the cgroup
//! → container resolver, user names and the host's network namespace.
use std::sync::Arc;

use super::{netns::HostNetns, resolver::IdentityResolver, users::UserNames};

/// Container identity sources; absent in unit tests and `--no-identity`.
pub struct IdentitySources {
    pub resolver: IdentityResolver,
    pub users: UserNames,
    pub host_netns: HostNetns,
}

impl IdentitySources {
    /// Cgroup tree, containerd client (its worker must be spawned by the
    /// caller), user names and the host's network namespace.
    pub fn from_config(
        config: &crate::config::IdentityConfig,
    ) -> anyhow::Result<(IdentitySources, super::containerd::ContainerdWorker)> {
        use anyhow::Context as _;

        use super::{
            cgroups::{CgroupPaths, CgroupPathsConfig},
            containerd::{ContainerdConfig, ContainerdMetadata},
            users::UserNamesConfig,
        };
        let cgroups = CgroupPaths::from_mountinfo(CgroupPathsConfig::default())
            .context("cgroup tree for container identity")?;
        // Warm the cache so the first events do not each trigger a walk.
        if let Err(err) = cgroups.refresh() {
            tracing::warn!(%err, "initial cgroup walk failed; retrying on demand");
        }
        let (containerd, worker) = ContainerdMetadata::new(ContainerdConfig {
            socket: config.containerd_socket.clone(),
            namespace: config.containerd_namespace.clone(),
            ..Default::default()
        })
        .context("containerd client")?;
        let users = UserNames::new(UserNamesConfig {
            host_passwd: config.host_passwd.clone(),
            ..Default::default()
        });
        let host_netns =
            HostNetns::detect().context("reading this host's network namespace cookie")?;
        Ok((
            IdentitySources {
                resolver: IdentityResolver::new(cgroups, Some(containerd)),
                users,
                host_netns,
            },
            worker,
        ))
    }
}

impl IdentitySources {
    /// `user.name` for `uid`: the process's own view; when it has already
    /// exited, any live process of the same cgroup (same root filesystem,
    /// found through the cgroup's `cgroup.procs`); failing that, the host's
    /// passwd.
    pub fn user_name(&self, tgid: u32, uid: u32, cgroup_path: Option<&str>) -> Option<Arc<str>> {
        let mut name = self.users.lookup(tgid, uid);
        if name.is_none()
            && let Some(path) = cgroup_path
        {
            let procs = self
                .resolver
                .cgroups()
                .root()
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs");
            let sibling = std::fs::read_to_string(procs)
                .ok()
                .and_then(|pids| pids.lines().find_map(|pid| pid.trim().parse::<u32>().ok()));
            name = sibling.and_then(|pid| self.users.lookup(pid, uid));
        }
        if name.is_none() {
            name = self.users.host(uid);
        }
        name
    }
}
