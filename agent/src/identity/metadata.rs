//! Container and pod metadata, built from containerd container records.
//! Pure functions only: the gRPC side lives in `containerd.rs`.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use serde::Deserialize;

/// Labels the CRI plugin (and kubelet) put on container records.
pub mod labels {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// dockershim / cri-dockerd style sandbox reference.
    pub const SANDBOX_ID: &str = "io.kubernetes.sandbox.id";
    /// containerd CRI: `sandbox` or `container`.
    pub const CRI_KIND: &str = "io.cri-containerd.kind";
    pub const KIND_SANDBOX: &str = "sandbox";
}

/// OCI annotations the CRI plugins put in the runtime spec.
pub mod annotations {
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";
}

/// Label prefixes that belong to the runtime, not to the user's pod.
const RUNTIME_LABEL_PREFIXES: [&str; 2] = ["io.kubernetes.", "io.cri-containerd."];

/// An image reference split the way people read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRef {
    /// Everything before the tag/digest, registry (and port) included.
    pub repository: String,
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

/// Splits `[registry[:port]/]path[:tag][@digest]`. A colon only starts a tag
/// after the last slash, so a registry port is never taken for one. No tag
/// means none was given (not "latest": the record may pin a digest).
pub fn parse_image(reference: &str) -> Option<ImageRef> {
    let reference = reference.trim();
    if reference.is_empty() {
        return None;
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) if digest.contains(':') => (name, Some(digest.to_owned())),
        Some(_) => return None,
        None => (reference, None),
    };
    // A bare image id (`sha256:<hex>`) has no repository.
    if digest.is_none() && name.starts_with("sha256:") && !name.contains('/') {
        return Some(ImageRef {
            repository: String::new(),
            tag: None,
            digest: Some(name.to_owned()),
        });
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (&name[..at], Some(name[at + 1..].to_owned()))
        }
        None => (name, None),
    };
    if repository.is_empty() || tag.as_deref() == Some("") {
        return None;
    }
    Some(ImageRef {
        repository: repository.to_owned(),
        tag,
        digest,
    })
}

/// The parts of an OCI runtime spec we use.
#[derive(Debug, Default, Deserialize)]
pub struct SpecSummary {
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub linux: Option<SpecLinux>,
    /// For `k8s.pod.sa` ([`super::service_account`]).
    #[serde(default)]
    pub mounts: Vec<super::service_account::SpecMount>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SpecLinux {
    /// Absent means "all of the host's namespaces".
    #[serde(default)]
    pub namespaces: Option<Vec<SpecNamespace>>,
}

#[derive(Debug, Deserialize)]
pub struct SpecNamespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
}

impl SpecSummary {
    pub fn from_json(bytes: &[u8]) -> Result<SpecSummary, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether the container shares the host network namespace: it does if
    /// the spec asks for no network namespace, or joins one that is the same
    /// as `host_netns_file`'s. `None` when that cannot be told (the path to
    /// join is gone, or no host reference was given).
    pub fn host_network(&self, host_netns_file: Option<&Path>) -> Option<bool> {
        let Some(namespaces) = self.linux.as_ref().and_then(|l| l.namespaces.as_ref()) else {
            return Some(true);
        };
        match namespaces.iter().find(|ns| ns.kind == "network") {
            None => Some(true),
            Some(SpecNamespace { path: None, .. }) => Some(false),
            Some(SpecNamespace {
                path: Some(path), ..
            }) if path.is_empty() => Some(false),
            Some(SpecNamespace {
                path: Some(path), ..
            }) => super::netns::same_netns_file(Path::new(path), host_netns_file?).ok(),
        }
    }
}

/// Pod-level identity, from the container's labels and its sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub sandbox_id: Option<String>,
    /// The pod's own labels: the sandbox record's labels without the
    /// runtime's `io.kubernetes.*` / `io.cri-containerd.*` ones.
    pub labels: BTreeMap<String, String>,
    /// `k8s.pod.sa`, where the container's spec names it.
    pub service_account: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    /// A pod's sandbox ("pause") container.
    Sandbox,
    /// A CRI workload container.
    Container,
    /// Not created through CRI (ctr, nerdctl, BuildKit, …).
    Plain,
}

/// Everything known about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub id: String,
    /// The Kubernetes container name, else the id.
    pub name: String,
    pub kind: ContainerKind,
    /// The image reference as recorded, if any (`ctr run --rootfs` has none).
    pub image: Option<String>,
    pub image_ref: Option<ImageRef>,
    pub pod: Option<PodMeta>,
    /// The container record's own labels, unfiltered.
    pub labels: BTreeMap<String, String>,
    pub host_network: Option<bool>,
}

impl ContainerMeta {
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// Builds metadata from a container record's fields. `sandbox` is the
    /// pod sandbox's metadata when this is a workload container and it is
    /// known; `host_netns_file` is the reference for the host-network check.
    pub fn from_record(
        id: &str,
        record_labels: &HashMap<String, String>,
        image: &str,
        spec: Option<&SpecSummary>,
        sandbox: Option<&ContainerMeta>,
        host_netns_file: Option<&Path>,
    ) -> ContainerMeta {
        let empty = HashMap::new();
        let annotations = spec.map_or(&empty, |s| &s.annotations);
        let label = |key: &str| record_labels.get(key).filter(|v| !v.is_empty()).cloned();
        let annotation = |key: &str| annotations.get(key).filter(|v| !v.is_empty()).cloned();

        let kind = kind_of(record_labels, annotations);

        let pod = (kind != ContainerKind::Plain).then(|| {
            let sandbox_id = if kind == ContainerKind::Sandbox {
                Some(id.to_owned())
            } else {
                sandbox_id(record_labels, annotations)
            };
            let labels = match (kind, sandbox) {
                (ContainerKind::Sandbox, _) => pod_labels(record_labels),
                (_, Some(sandbox)) => sandbox
                    .pod
                    .as_ref()
                    .map(|p| p.labels.clone())
                    .unwrap_or_default(),
                _ => BTreeMap::new(),
            };
            PodMeta {
                name: label(labels::POD_NAME).or_else(|| annotation(annotations::SANDBOX_NAME)),
                namespace: label(labels::POD_NAMESPACE)
                    .or_else(|| annotation(annotations::SANDBOX_NAMESPACE)),
                uid: label(labels::POD_UID).or_else(|| annotation(annotations::SANDBOX_UID)),
                sandbox_id,
                labels,
                service_account: spec.and_then(|s| super::service_account::from_mounts(&s.mounts)),
            }
        });

        let name = label(labels::CONTAINER_NAME)
            .or_else(|| annotation(annotations::CONTAINER_NAME))
            .unwrap_or_else(|| id.to_owned());
        let image = Some(image.to_owned())
            .filter(|i| !i.is_empty())
            .or_else(|| annotation(annotations::IMAGE_NAME));
        ContainerMeta {
            id: id.to_owned(),
            name,
            kind,
            image_ref: image.as_deref().and_then(parse_image),
            image,
            pod,
            labels: record_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            host_network: spec.and_then(|s| s.host_network(host_netns_file)),
        }
    }
}

/// Sandbox, CRI workload, or plain, from the record's labels and its spec's
/// annotations.
pub fn kind_of(
    record_labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> ContainerKind {
    let label = |key: &str| record_labels.get(key).map(String::as_str);
    let container_type = annotations
        .get(annotations::CONTAINER_TYPE)
        .map(String::as_str);
    if label(labels::CRI_KIND) == Some(labels::KIND_SANDBOX) || container_type == Some("sandbox") {
        ContainerKind::Sandbox
    } else if label(labels::POD_NAME).is_some_and(|v| !v.is_empty())
        || label(labels::CRI_KIND).is_some()
        || container_type.is_some()
    {
        ContainerKind::Container
    } else {
        ContainerKind::Plain
    }
}

/// Where a workload container names its sandbox: containerd's annotation,
/// CRI-O's, or the label dockershim-era tooling (and our tests) use.
pub fn sandbox_id(
    record_labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> Option<String> {
    annotations
        .get(annotations::SANDBOX_ID)
        .or_else(|| annotations.get(annotations::CRIO_SANDBOX_ID))
        .or_else(|| record_labels.get(labels::SANDBOX_ID))
        .filter(|v| !v.is_empty())
        .cloned()
}

/// A sandbox's labels minus the runtime's own.
pub fn pod_labels(sandbox_labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    sandbox_labels
        .iter()
        .filter(|(k, _)| !RUNTIME_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(r: &str) -> Option<(String, Option<String>, Option<String>)> {
        parse_image(r).map(|i| (i.repository, i.tag, i.digest))
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn image_references() {
        assert_eq!(image("nginx"), Some(("nginx".into(), None, None)));
        assert_eq!(image("nginx:1.25"), Some(("nginx".into(), s("1.25"), None)));
        assert_eq!(
            image("docker.io/library/nginx:1.25"),
            Some(("docker.io/library/nginx".into(), s("1.25"), None))
        );
        assert_eq!(
            image("registry.local:5000/team/app"),
            Some(("registry.local:5000/team/app".into(), None, None))
        );
        assert_eq!(
            image("registry.local:5000/team/app:v2"),
            Some(("registry.local:5000/team/app".into(), s("v2"), None))
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            image(&format!("quay.io/x/y@{digest}")),
            Some(("quay.io/x/y".into(), None, Some(digest.clone())))
        );
        assert_eq!(
            image(&format!("localhost:5000/y:1.0@{digest}")),
            Some(("localhost:5000/y".into(), s("1.0"), Some(digest.clone())))
        );
        assert_eq!(
            image(&digest),
            Some((String::new(), None, Some(digest.clone())))
        );
        for bad in ["", "  ", "x@", "x@nodigest", ":tag", "repo:", "@sha256:ab"] {
            assert_eq!(image(bad), None, "{bad:?}");
        }
    }

    fn spec(json: &str) -> SpecSummary {
        SpecSummary::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn host_network_from_spec() {
        let own = Path::new("/proc/self/ns/net");
        assert_eq!(spec("{}").host_network(Some(own)), Some(true));
        assert_eq!(spec(r#"{"linux":{}}"#).host_network(None), Some(true));
        let no_net = r#"{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#;
        assert_eq!(spec(no_net).host_network(None), Some(true));
        let new_net = r#"{"linux":{"namespaces":[{"type":"network"}]}}"#;
        assert_eq!(spec(new_net).host_network(None), Some(false));
        let joined_host =
            r#"{"linux":{"namespaces":[{"type":"network","path":"/proc/self/ns/net"}]}}"#;
        assert_eq!(spec(joined_host).host_network(Some(own)), Some(true));
        assert_eq!(spec(joined_host).host_network(None), None);
        let joined_gone =
            r#"{"linux":{"namespaces":[{"type":"network","path":"/proc/0/ns/net"}]}}"#;
        assert_eq!(spec(joined_gone).host_network(Some(own)), None);
        assert!(SpecSummary::from_json(b"not json").is_err());
        assert!(SpecSummary::from_json(br#"{"linux":{"namespaces":[{"path":1}]}}"#).is_err());
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_sandbox_and_container() {
        let sandbox_labels = map(&[
            (labels::CRI_KIND, "sandbox"),
            (labels::POD_NAME, "web-0"),
            (labels::POD_NAMESPACE, "shop"),
            (labels::POD_UID, "uid-1"),
            ("app", "web"),
            ("tier", "frontend"),
        ]);
        let sandbox = ContainerMeta::from_record("sb1", &sandbox_labels, "", None, None, None);
        assert_eq!(sandbox.kind, ContainerKind::Sandbox);
        let pod = sandbox.pod.as_ref().unwrap();
        assert_eq!(pod.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(
            pod.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            [("app", "web"), ("tier", "frontend")]
        );

        let container_labels = map(&[
            (labels::CRI_KIND, "container"),
            (labels::POD_NAME, "web-0"),
            (labels::POD_NAMESPACE, "shop"),
            (labels::POD_UID, "uid-1"),
            (labels::CONTAINER_NAME, "nginx"),
        ]);
        let annotated = spec(
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"sb1","io.kubernetes.cri.container-type":"container"},
                "linux":{"namespaces":[{"type":"network","path":"/proc/0/ns/net"}]}}"#,
        );
        let meta = ContainerMeta::from_record(
            "c1",
            &container_labels,
            "docker.io/library/nginx:1.25",
            Some(&annotated),
            Some(&sandbox),
            Some(Path::new("/proc/self/ns/net")),
        );
        assert_eq!(
            (meta.name.as_str(), meta.kind),
            ("nginx", ContainerKind::Container)
        );
        let pod = meta.pod.as_ref().unwrap();
        assert_eq!(
            (
                pod.name.as_deref(),
                pod.namespace.as_deref(),
                pod.uid.as_deref()
            ),
            (Some("web-0"), Some("shop"), Some("uid-1"))
        );
        assert_eq!(pod.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!(pod.labels, sandbox.pod.as_ref().unwrap().labels);
        let image = meta.image_ref.as_ref().unwrap();
        assert_eq!(
            (image.repository.as_str(), image.tag.as_deref()),
            ("docker.io/library/nginx", Some("1.25"))
        );
        assert_eq!(meta.host_network, None);
    }

    #[test]
    fn sandbox_reference_fallbacks() {
        let by_label = map(&[(labels::SANDBOX_ID, "sb2")]);
        assert_eq!(
            sandbox_id(&by_label, &HashMap::new()).as_deref(),
            Some("sb2")
        );
        let crio = map(&[(annotations::CRIO_SANDBOX_ID, "sb3")]);
        assert_eq!(sandbox_id(&HashMap::new(), &crio).as_deref(), Some("sb3"));
        let empty = map(&[(labels::SANDBOX_ID, "")]);
        assert_eq!(sandbox_id(&empty, &HashMap::new()), None);
    }

    #[test]
    fn plain_container_and_annotation_only_metadata() {
        let plain =
            ContainerMeta::from_record("mycontainer", &map(&[("a", "b")]), "", None, None, None);
        assert_eq!(
            (plain.kind, plain.name.as_str(), plain.short_id()),
            (ContainerKind::Plain, "mycontainer", "mycontainer")
        );
        assert_eq!(
            (plain.pod, plain.image, plain.host_network),
            (None, None, None)
        );

        let only_annotations = spec(
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-name":"p",
                "io.kubernetes.cri.sandbox-namespace":"n","io.kubernetes.cri.container-name":"c",
                "io.kubernetes.cri.image-name":"busybox:1.36"}}"#,
        );
        let meta = ContainerMeta::from_record(
            "x",
            &HashMap::new(),
            "",
            Some(&only_annotations),
            None,
            None,
        );
        assert_eq!(meta.name, "c");
        assert_eq!(meta.image.as_deref(), Some("busybox:1.36"));
        let pod = meta.pod.unwrap();
        assert_eq!(
            (pod.name.as_deref(), pod.namespace.as_deref()),
            (Some("p"), Some("n"))
        );
        assert_eq!(meta.host_network, Some(true));
    }
}
