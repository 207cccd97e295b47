//! `k8s.pod.sa`: a pod's service account, where the container's OCI spec
//! (what containerd 1.6 gives without the Kubernetes API) names it.
//!
//! The kubelet mounts the account's credentials at
//! [`TOKEN_MOUNT`]. Before projected tokens (Kubernetes < 1.22, or pods
//! using a legacy token Secret) the mount's source is the Secret's volume,
//! `…/volumes/kubernetes.io~secret/<account>-token-<5 chars>`, which names
//! the account. Projected volumes (`…/kubernetes.io~projected/
//! kube-api-access-<5 chars>`, the default since 1.22) do not, and neither
//! do the CRI labels or annotations: the name is then only inside the token
//! itself, which Egret does not read (it would mean the agent reading every
//! pod's credentials), so the field is missing there.
use serde::Deserialize;

/// Where the kubelet mounts a pod's service account credentials.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// One OCI spec mount (only what is read here).
#[derive(Debug, Default, Deserialize)]
pub struct SpecMount {
    #[serde(default)]
    pub destination: String,
    #[serde(default)]
    pub source: String,
}

/// The service account named by the token mount's source, if any.
pub fn from_mounts(mounts: &[SpecMount]) -> Option<String> {
    let mount = mounts
        .iter()
        .find(|m| m.destination.trim_end_matches('/') == TOKEN_MOUNT)?;
    let (volumes, volume) = mount.source.trim_end_matches('/').rsplit_once('/')?;
    if !volumes.ends_with("/volumes/kubernetes.io~secret") {
        return None;
    }
    // `<account>-token-<suffix>`: the suffix is the Secret's random part.
    let (account, suffix) = volume.rsplit_once("-token-")?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(account) && valid(suffix)).then(|| account.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(destination: &str, source: &str) -> SpecMount {
        SpecMount {
            destination: destination.into(),
            source: source.into(),
        }
    }

    #[test]
    fn legacy_secret_volumes_name_the_account() {
        let m = [
            mount("/etc/hosts", "/var/lib/kubelet/pods/u/etc-hosts"),
            mount(
                TOKEN_MOUNT,
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/build-bot-token-x7k2q",
            ),
        ];
        assert_eq!(from_mounts(&m).as_deref(), Some("build-bot"));
    }

    #[test]
    fn projected_tokens_and_oddities_do_not() {
        for source in [
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~projected/kube-api-access-x7k2q",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/no-suffix",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/-token-abc",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/Bad_Name-token-abc",
            "",
        ] {
            assert_eq!(from_mounts(&[mount(TOKEN_MOUNT, source)]), None, "{source}");
        }
        assert_eq!(from_mounts(&[]), None);
    }
}
