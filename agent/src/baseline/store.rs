//! The learned profile on disk: one JSON file, written whole to a temporary
//! file in the same directory, synced, then renamed over the old one, so a
//! crash leaves the old or the new profile, never half of one. Its size is
//! bounded by the learner's limits (workloads × destinations).
use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::advise::model::{Proto, WorkloadKey};

pub const VERSION: u32 = 1;
/// Larger files are refused rather than read: the learner never writes one.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub version: u32,
    pub workloads: Vec<WorkloadProfile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadProfile {
    pub key: WorkloadKey,
    /// When the workload was first seen (Unix ns): learning ends one
    /// learning period later.
    pub first_seen_ns: u64,
    pub destinations: Vec<LearnedDestination>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedDestination {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

impl ProfileFile {
    /// Errors are one line, with the JSON position when the file is bad.
    pub fn load(path: &Path) -> Result<ProfileFile, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        if size > MAX_FILE_BYTES {
            return Err(format!(
                "{size} bytes, more than the {MAX_FILE_BYTES} a profile can be"
            ));
        }
        let profile: ProfileFile =
            serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
        if profile.version != VERSION {
            return Err(format!(
                "version {} (this Egret reads {VERSION})",
                profile.version
            ));
        }
        Ok(profile)
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_atomic(path, &bytes)
    }
}

/// Replaces `path` with `bytes` atomically (temporary file, fsync, rename,
/// fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clear_errors() {
        let dir = std::env::temp_dir().join(format!("egret-store-{}", std::process::id()));
        let path = dir.join("sub/profile.json");
        let profile = ProfileFile {
            version: VERSION,
            workloads: vec![WorkloadProfile {
                key: WorkloadKey {
                    namespace: "shop".into(),
                    labels: [("app".to_owned(), "web".to_owned())].into(),
                },
                first_seen_ns: 1,
                destinations: vec![LearnedDestination {
                    ip: "2001:db8::1".parse().unwrap(),
                    port: 443,
                    proto: Proto::Tcp,
                    count: 3,
                    first_ns: 1,
                    last_ns: 2,
                }],
            }],
        };
        profile.save(&path).unwrap();
        profile.save(&path).unwrap();
        assert_eq!(ProfileFile::load(&path).unwrap(), profile);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        std::fs::write(&path, "{\"version\":1,\"workloads\":[{\"key\":1}]}").unwrap();
        assert!(ProfileFile::load(&path).unwrap_err().contains("column"));
        std::fs::write(&path, "{\"version\":9,\"workloads\":[]}").unwrap();
        assert!(ProfileFile::load(&path).unwrap_err().contains("version 9"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
