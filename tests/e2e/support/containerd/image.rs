//! A single-layer OCI image archive made from a directory, for
//! `ctr image import`: no registry, no network.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// OCI's name for this machine's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes an OCI image layout for `rootfs` under `work` and packs it;
/// returns the archive's path. The index names the image `name` the way
/// containerd's importer reads it.
pub fn oci_archive(rootfs: &Path, name: &str, work: &Path) -> PathBuf {
    let blobs = work.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let layer_tar = work.join("layer.tar");
    tar(&["-C", path(rootfs), "-cf", path(&layer_tar), "."]);
    let layer = add_blob(&blobs, &fs::read(&layer_tar).unwrap());
    fs::remove_file(&layer_tar).unwrap();
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    });
    let config = add_blob(&blobs, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.digest, "size": layer.size}],
    });
    let manifest = add_blob(&blobs, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest, "size": manifest.size,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name},
        }],
    });
    fs::write(work.join("index.json"), index.to_string()).unwrap();
    fs::write(work.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let archive = work.with_extension("tar");
    tar(&[
        "-C",
        path(work),
        "-cf",
        path(&archive),
        "oci-layout",
        "index.json",
        "blobs",
    ]);
    archive
}

fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

fn tar(args: &[&str]) {
    let status = Command::new("tar").args(args).status().expect("tar");
    assert!(status.success(), "tar {args:?}");
}

struct Blob {
    digest: String,
    size: usize,
}

fn add_blob(blobs: &Path, bytes: &[u8]) -> Blob {
    let tmp = blobs.join("incoming");
    fs::write(&tmp, bytes).unwrap();
    let out = Command::new("sha256sum")
        .arg(&tmp)
        .output()
        .expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned();
    fs::rename(&tmp, blobs.join(&hex)).unwrap();
    Blob {
        digest: format!("sha256:{hex}"),
        size: bytes.len(),
    }
}
