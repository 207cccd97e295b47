//! Container id (and pod UID) from a cgroup v2 path.
//!
//! Runtimes encode the container id in the cgroup path in a handful of
//! shapes, depending on the runtime and on whether the kubelet uses the
//! cgroupfs or the systemd cgroup driver. The parser is strict: an id is only
//! accepted in a position and form a runtime actually produces, so host
//! services and user sessions never look like containers, and a hostile name
//! (a process may create cgroups in its own delegated subtree) cannot smuggle
//! arbitrary text into an id.

/// Longest path we bother parsing; real ones are a few hundred bytes.
const MAX_PATH_LEN: usize = 4096;
/// containerd's identifier limit (`identifiers.Validate`).
const MAX_CONTAINERD_ID_LEN: usize = 76;
/// Docker-style ids, and the length `short_id` cuts to.
const HEX_ID_LEN: usize = 64;
const SHORT_ID_LEN: usize = 12;

/// Which runtime's naming scheme the id was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd: CRI (`cri-containerd-<id>.scope`, or a bare id under
    /// `kubepods`), or a non-CRI container at `/<namespace>/<id>`.
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A 64-hex id in a position no known runtime claims (another runtime's
    /// systemd scope, or a bare id outside kubepods and docker).
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Unknown => "unknown",
        }
    }
}

/// A container found in a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// Full id: 64 lowercase hex for every runtime except containerd's
    /// non-CRI `/<namespace>/<id>` form, where it is any containerd
    /// identifier.
    pub id: Box<str>,
    /// containerd namespace, only for the `/<namespace>/<id>` form (CRI
    /// containers live in the namespace the agent is configured with).
    pub namespace: Option<Box<str>>,
    /// Pod UID (with dashes) when a kubepods ancestor names it.
    pub pod_uid: Option<Box<str>>,
}

impl ContainerRef {
    /// The first 12 characters of the id, as `docker ps` and Falco show it.
    pub fn short_id(&self) -> &str {
        // Ids are validated ASCII, so any byte index is a char boundary.
        self.id.get(..SHORT_ID_LEN).unwrap_or(&self.id)
    }
}

/// The innermost container a cgroup path belongs to, or `None` for host
/// cgroups. Sub-cgroups of a container (a container running systemd, nested
/// runtimes) belong to their nearest container ancestor.
pub fn parse(path: &str) -> Option<ContainerRef> {
    if path.len() > MAX_PATH_LEN || !path.is_ascii() {
        return None;
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (index, runtime, id) = parts
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, part)| container_in_component(&parts[..i], part).map(|(r, id)| (i, r, id)))
        .or_else(|| containerd_namespaced(&parts))?;
    // `/<namespace>/<id>` (ctr, nerdctl): the id lives in that namespace
    // rather than the CRI one the agent is configured with.
    let namespace = (index == 1 && runtime == Runtime::Containerd && valid_namespace(parts[0]))
        .then(|| Box::from(parts[0]));
    let pod_uid = parts[..index].iter().rev().find_map(|p| pod_uid(p));
    Some(ContainerRef {
        runtime,
        id: id.into(),
        namespace,
        pod_uid,
    })
}

/// A container id in one path component, given the components above it.
fn container_in_component<'a>(ancestors: &[&str], part: &'a str) -> Option<(Runtime, &'a str)> {
    if let Some(stem) = part.strip_suffix(".scope") {
        return scoped_id(stem);
    }
    // cgroupfs driver: CRI-O prefixes, containerd and Docker use the bare id.
    if let Some(id) = part.strip_prefix("crio-") {
        return is_hex_id(id).then_some((Runtime::CriO, id));
    }
    if !is_hex_id(part) {
        return None;
    }
    let runtime = if ancestors.iter().any(|a| is_kubepods(a)) {
        // cri-dockerd produces the same shape; containerd is by far the
        // common case and the metadata lookup confirms it either way.
        Runtime::Containerd
    } else if ancestors.last() == Some(&"docker") {
        Runtime::Docker
    } else if ancestors.len() == 1 && valid_namespace(ancestors[0]) {
        Runtime::Containerd
    } else {
        Runtime::Unknown
    };
    Some((runtime, part))
}

/// systemd driver: `<prefix>-<64hex>.scope`. The runtimes' monitor processes
/// (`crio-conmon-…`, `libpod-conmon-…`) are not the container.
fn scoped_id(stem: &str) -> Option<(Runtime, &str)> {
    let (prefix, id) = stem.rsplit_once('-')?;
    if !is_hex_id(id) || prefix.ends_with("conmon") {
        return None;
    }
    let runtime = match prefix {
        "cri-containerd" => Runtime::Containerd,
        "crio" => Runtime::CriO,
        "docker" => Runtime::Docker,
        "libpod" => Runtime::Podman,
        _ => Runtime::Unknown,
    };
    Some((runtime, id))
}

/// containerd without CRI (`ctr run`, nerdctl, BuildKit) puts a container
/// at `/<namespace>/<id>`, where the id is any containerd identifier. Only
/// that exact depth is accepted: deeper arbitrary paths are too ambiguous.
fn containerd_namespaced<'a>(parts: &[&'a str]) -> Option<(usize, Runtime, &'a str)> {
    let [namespace, id] = parts else {
        return None;
    };
    (valid_namespace(namespace) && valid_containerd_id(id) && !is_unit_name(id)).then_some((
        1,
        Runtime::Containerd,
        *id,
    ))
}

/// A containerd namespace that is not one of the well-known host trees.
fn valid_namespace(name: &str) -> bool {
    const HOST_TREES: [&str; 4] = ["kubepods", "docker", "lxc", "machine"];
    valid_containerd_id(name) && !HOST_TREES.contains(&name) && !is_unit_name(name)
}

/// systemd unit names, which host cgroups are made of.
fn is_unit_name(name: &str) -> bool {
    [".slice", ".scope", ".service", ".mount", ".socket", ".swap"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// containerd's identifier grammar: alphanumeric runs joined by single
/// `.`, `_` or `-`, at most 76 characters.
fn valid_containerd_id(id: &str) -> bool {
    if id.is_empty() || id.len() > MAX_CONTAINERD_ID_LEN {
        return false;
    }
    let bytes = id.as_bytes();
    let is_sep = |b: u8| matches!(b, b'.' | b'_' | b'-');
    bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || is_sep(*b))
        && !is_sep(bytes[0])
        && !is_sep(bytes[bytes.len() - 1])
        && !bytes.windows(2).any(|w| is_sep(w[0]) && is_sep(w[1]))
}

fn is_hex_id(s: &str) -> bool {
    s.len() == HEX_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_kubepods(part: &str) -> bool {
    part == "kubepods" || part.starts_with("kubepods.") || part.starts_with("kubepods-")
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice` (systemd, where
/// the uid's dashes became underscores because `-` separates slice levels).
pub fn pod_uid(part: &str) -> Option<Box<str>> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        let (_, uid) = slice.rsplit_once("-pod")?;
        slice.starts_with("kubepods").then_some(uid)?
    } else {
        part.strip_prefix("pod")?
    };
    let uid: String = raw
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    // UUIDs (API pods) or 32-hex config hashes (static pods).
    let well_formed = (32..=36).contains(&uid.len())
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && uid.bytes().filter(|b| b.is_ascii_hexdigit()).count() == 32;
    well_formed.then(|| uid.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b2a1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
    const UID: &str = "0c6b7e5f-1234-4abc-9def-0123456789ab";

    fn id_of(path: &str) -> Option<(Runtime, String)> {
        parse(path).map(|c| (c.runtime, c.id.into_string()))
    }

    fn pod_of(path: &str) -> Option<String> {
        parse(path).and_then(|c| c.pod_uid.map(|u| u.into_string()))
    }

    #[test]
    fn containerd_cri_cgroupfs() {
        for qos in ["/kubepods/burstable", "/kubepods/besteffort", "/kubepods"] {
            let path = format!("{qos}/pod{UID}/{ID}");
            assert_eq!(
                id_of(&path),
                Some((Runtime::Containerd, ID.into())),
                "{path}"
            );
            assert_eq!(pod_of(&path).as_deref(), Some(UID), "{path}");
        }
    }

    #[test]
    fn containerd_cri_systemd() {
        let uid = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
        );
        let c = parse(&path).unwrap();
        assert_eq!((c.runtime, &*c.id), (Runtime::Containerd, ID));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(c.short_id(), &ID[..12]);
        assert_eq!(c.namespace, None);
        // Guaranteed QoS pods sit directly under kubepods.slice.
        let path = format!("/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{ID}.scope");
        assert_eq!(pod_of(&path).as_deref(), Some(UID));
    }

    #[test]
    fn crio_both_drivers() {
        let systemd = format!("/kubepods.slice/kubepods-besteffort.slice/x/crio-{ID}.scope");
        assert_eq!(id_of(&systemd), Some((Runtime::CriO, ID.into())));
        let cgroupfs = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
        assert_eq!(id_of(&cgroupfs), Some((Runtime::CriO, ID.into())));
        assert_eq!(pod_of(&cgroupfs).as_deref(), Some(UID));
        // conmon watches the container from outside it.
        assert_eq!(
            parse(&format!("/machine.slice/crio-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn docker_and_podman() {
        assert_eq!(
            id_of(&format!("/docker/{ID}")),
            Some((Runtime::Docker, ID.into()))
        );
        assert_eq!(
            id_of(&format!("/system.slice/docker-{ID}.scope")),
            Some((Runtime::Docker, ID.into()))
        );
        assert_eq!(
            id_of(&format!("/machine.slice/libpod-{ID}.scope")),
            Some((Runtime::Podman, ID.into()))
        );
        assert_eq!(
            id_of(&format!("/system.slice/other-runtime-{ID}.scope")),
            Some((Runtime::Unknown, ID.into()))
        );
    }

    #[test]
    fn containerd_namespaced() {
        let c = parse("/default/mycontainer").unwrap();
        assert_eq!((c.runtime, &*c.id), (Runtime::Containerd, "mycontainer"));
        assert_eq!(c.namespace.as_deref(), Some("default"));
        assert_eq!(c.short_id(), "mycontainer");
        let c = parse(&format!("/k8s.io/{ID}")).unwrap();
        assert_eq!(
            (c.runtime, c.namespace.as_deref()),
            (Runtime::Containerd, Some("k8s.io"))
        );
        let c = parse("/buildkit/a.b_c-d").unwrap();
        assert_eq!(&*c.id, "a.b_c-d");
    }

    #[test]
    fn nested_runtimes_pick_the_innermost_container() {
        // A kind node (Docker container) running a pod.
        let outer = "a".repeat(64);
        let path = format!("/docker/{outer}/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(id_of(&path), Some((Runtime::Containerd, ID.into())));
        // The pod cgroup itself belongs to the node container.
        let path = format!("/docker/{outer}/kubepods/burstable/pod{UID}");
        assert_eq!(id_of(&path), Some((Runtime::Docker, outer.clone())));
        // A container running systemd: its sub-cgroups are still the container.
        let path = format!("/system.slice/docker-{ID}.scope/init.scope");
        assert_eq!(id_of(&path), Some((Runtime::Docker, ID.into())));
    }

    #[test]
    fn host_paths_are_not_containers() {
        for path in [
            "",
            "/",
            "/init.scope",
            "/system.slice",
            "/system.slice/sshd.service",
            "/system.slice/containerd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.socket",
            "/kubepods",
            "/kubepods/burstable",
            &format!("/kubepods/burstable/pod{UID}"),
            "/kubepods.slice/kubepods-burstable.slice",
            "/machine.slice/machine-qemu\\x2d1.scope",
            "/a/b/c",
            "/system.slice/foo",
            "/lxc.payload.c1/init.scope",
        ] {
            assert_eq!(parse(path), None, "{path:?}");
        }
    }

    #[test]
    fn hostile_input() {
        let long = format!("/{}", "a/".repeat(MAX_PATH_LEN));
        for path in [
            long.as_str(),
            "/default/..",
            "/default/.hidden",
            "/default/a..b",
            "/default/-x",
            "/default/x-",
            "/default/caf\u{e9}",
            "/default/a b",
            "/default/a\0b",
            &format!("/default/{}", "a".repeat(77)),
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{}", ID.to_uppercase()),
            &format!("/docker/{ID}0"),
            &format!("/x/cri-containerd-{}.scope", "g".repeat(64)),
            &format!("/x/cri-containerd{ID}.scope"),
            &format!("/kubepods/besteffort/crio-{ID}x"),
            "/kubepods.slice/.scope",
            "/-.scope",
        ] {
            assert_eq!(parse(path), None, "{path:?}");
        }
        // Pod UIDs must look like UIDs.
        assert_eq!(pod_of(&format!("/kubepods/pod../{ID}")), None);
        assert_eq!(pod_of(&format!("/kubepods/podxyz/{ID}")), None);
        assert_eq!(pod_of(&format!("/x/notkubepods-pod{UID}.slice/{ID}")), None);
        // Static pods carry a 32-hex config hash as UID.
        let hash = "6ad5c7b1e3f2a4b5c6d7e8f9a0b1c2d3";
        assert_eq!(
            pod_of(&format!("/kubepods/pod{hash}/{ID}")).as_deref(),
            Some(hash)
        );
    }

    #[test]
    fn repeated_slashes_are_tolerated() {
        assert_eq!(
            id_of(&format!("//docker//{ID}/")),
            Some((Runtime::Docker, ID.into()))
        );
    }
}
