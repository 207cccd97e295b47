//! What a quarantine is: the request a SOAR sends, the record the agent
//! keeps (and persists), and the TTL syntax.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Who or what to quarantine. Exactly one shape; unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    Container { container_id: String },
    PodUid { pod_uid: String },
    Pod { namespace: String, pod: String },
}

impl std::fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSpec::Container { container_id } => write!(f, "container {container_id}"),
            TargetSpec::PodUid { pod_uid } => write!(f, "pod uid {pod_uid}"),
            TargetSpec::Pod { namespace, pod } => write!(f, "pod {namespace}/{pod}"),
        }
    }
}

/// `POST /v1/quarantines` body (and one entry of the quarantine list file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRequest {
    pub target: TargetSpec,
    /// Destinations that stay reachable (CIDR or bare address).
    #[serde(default)]
    pub allow: Vec<String>,
    /// `30m`, `1h30m`, `90s`, `2d`; none: until removed.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Allows quarantining kube-system workloads.
    #[serde(default)]
    pub force: bool,
    /// Also stop flows opened before the quarantine (default true).
    #[serde(default)]
    pub stop_existing: Option<bool>,
}

/// A request checked for syntax (before the target is resolved).
#[derive(Clone, Debug)]
pub struct Validated {
    pub target: TargetSpec,
    pub allow: Vec<IpNet>,
    pub ttl: Option<Duration>,
    pub reason: String,
    pub force: bool,
    pub stop_existing: bool,
}

/// Limits on what one request may ask for, so a client cannot exhaust the
/// shared allow trie or the persisted state.
pub const MAX_ALLOW: usize = 64;
const MAX_REASON: usize = 1024;
const MAX_ID_FIELD: usize = 253;

impl QuarantineRequest {
    pub fn validate(self) -> Result<Validated, String> {
        let field_ok = |value: &str| {
            !value.is_empty()
                && value.len() <= MAX_ID_FIELD
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let ok = match &self.target {
            TargetSpec::Container { container_id } => field_ok(container_id),
            TargetSpec::PodUid { pod_uid } => field_ok(pod_uid),
            TargetSpec::Pod { namespace, pod } => field_ok(namespace) && field_ok(pod),
        };
        if !ok {
            return Err(format!("target {}: not a valid identifier", self.target));
        }
        if self.allow.len() > MAX_ALLOW {
            return Err(format!("at most {MAX_ALLOW} allow entries"));
        }
        let allow = self
            .allow
            .iter()
            .map(|raw| {
                raw.parse::<IpNet>()
                    .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("allow: `{raw}` is not a CIDR such as 10.96.0.10/32"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ttl = self.ttl.as_deref().map(parse_ttl).transpose()?;
        let reason = self.reason.unwrap_or_default();
        if reason.len() > MAX_REASON {
            return Err(format!("reason: longer than {MAX_REASON} bytes"));
        }
        Ok(Validated {
            target: self.target,
            allow,
            ttl,
            reason,
            force: self.force,
            stop_existing: self.stop_existing.unwrap_or(true),
        })
    }
}

/// `1h30m`, `30m`, `45s`, `2d`: a sequence of number+unit, at least 1s.
pub fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let bad = || format!("ttl: `{raw}` is not a duration such as 30m, 1h30m or 90s");
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in raw.trim().chars() {
        if let Some(digit) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(digit)))
                    .ok_or_else(bad)?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    // A bare trailing number has no unit.
    if number.is_some() || total == 0 {
        return Err(bad());
    }
    // A year is plenty; longer is a typo, and keeps Instant math safe.
    if total > 366 * 86_400 {
        return Err(format!("ttl: `{raw}` is longer than a year"));
    }
    Ok(Duration::from_secs(total))
}

/// One quarantine as the agent keeps, persists and reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub target: TargetSpec,
    pub allow: Vec<IpNet>,
    pub reason: String,
    /// Who asked: `api:<peer>`, `file:<path>`, `rule:<name>`.
    pub requested_by: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub expires_unix: Option<u64>,
    pub stop_existing: bool,
    pub force: bool,
}

/// The persisted state: every quarantine of this node.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub quarantines: Vec<Record>,
}

impl State {
    pub fn load(path: &Path) -> std::io::Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, err.to_string())
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(err) => Err(err),
        }
    }

    /// Write-to-temp, fsync, rename, fsync the directory: a crash leaves the
    /// old state or the new, never a torn file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = PathBuf::from(path);
        tmp.as_mut_os_string().push(".tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = dir {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<Validated, String> {
        serde_json::from_str::<QuarantineRequest>(json)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn ttl_syntax() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        for bad in [
            "",
            "30",
            "m",
            "0s",
            "1x",
            "-1s",
            "99999999999999999999s",
            "400d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_take_each_target_shape() {
        let v = request(r#"{"target":{"container_id":"abc"},"allow":["10.96.0.10","2001:db8::/32"],"ttl":"1m"}"#)
            .unwrap();
        assert_eq!(
            v.target,
            TargetSpec::Container {
                container_id: "abc".into()
            }
        );
        assert_eq!(v.allow[0].to_string(), "10.96.0.10/32");
        assert!(v.stop_existing);
        assert!(matches!(
            request(r#"{"target":{"pod_uid":"u-1"}}"#).unwrap().target,
            TargetSpec::PodUid { .. }
        ));
        assert!(matches!(
            request(r#"{"target":{"namespace":"ns","pod":"web"}}"#)
                .unwrap()
                .target,
            TargetSpec::Pod { .. }
        ));
    }

    #[test]
    fn bad_requests_say_why() {
        for bad in [
            r#"{"target":{}}"#,
            r#"{"target":{"container_id":"a/../b"}}"#,
            r#"{"target":{"container_id":"a"},"allow":["nowhere"]}"#,
            r#"{"target":{"container_id":"a"},"ttl":"soon"}"#,
            r#"{"target":{"container_id":"a"},"color":"red"}"#,
        ] {
            assert!(request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_round_trips_atomically() {
        let dir = std::env::temp_dir().join(format!("egret-q-state-{}", std::process::id()));
        let path = dir.join("quarantines.json");
        assert!(State::load(&path).unwrap().quarantines.is_empty());
        let state = State {
            version: 1,
            quarantines: vec![Record {
                id: "q1".into(),
                target: TargetSpec::PodUid {
                    pod_uid: "u".into(),
                },
                allow: vec!["203.0.113.0/24".parse().unwrap()],
                reason: "r".into(),
                requested_by: "api:test".into(),
                created_unix: 1,
                expires_unix: Some(2),
                stop_existing: true,
                force: false,
            }],
        };
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap().quarantines, state.quarantines);
        assert!(!dir.join("quarantines.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
