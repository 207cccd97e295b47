//! `cargo xtask image`: a minimal OCI image of the agent, built locally with
//! buildah from artifacts on this machine (no base image, so nothing is
//! pulled): the binary, exactly the shared libraries `ldd` says it loads,
//! the bundled rules and the CA bundle for webhooks. The result is an OCI
//! archive that `ctr image import`, `podman load` or `skopeo copy` take.
//!
//! buildah runs with the vfs driver and a storage root under target/, so no
//! global container storage or configuration is touched. It needs root (as
//! the rest of the privileged tooling does).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::test::{cargo, root, run_step};

const USAGE: &str = "usage: cargo xtask image [--binary PATH] [--output PATH] [--name REF]\n\
  --binary PATH  package this egret build [default: target/release/egret, built first]\n\
  --output PATH  OCI archive to write [default: target/egret-image.tar]\n\
  --name REF     image reference [default: localhost/egret:<version>]";

/// Where the image puts things. The DaemonSet and docs/deploy.md use these.
pub const BINARY_IN_IMAGE: &str = "/egret";
pub const RULES_IN_IMAGE: &str = "/usr/share/egret/rules.d";
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

struct Options {
    binary: Option<PathBuf>,
    output: PathBuf,
    name: String,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let root = root();
    let mut options = Options {
        binary: None,
        output: root.join("target/egret-image.tar"),
        name: format!("localhost/egret:{}", env!("CARGO_PKG_VERSION")),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--binary" => options.binary = Some(absolute(value("--binary")?)),
            "--output" => options.output = absolute(value("--output")?),
            "--name" => options.name = value("--name")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(options)
}

fn absolute(path: String) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    let root = root();
    let binary = match options.binary {
        Some(binary) => binary,
        None => {
            run_step(
                "cargo build --release -p egret",
                cargo().args(["build", "--release", "-p", "egret", "--bin", "egret"]),
            )?;
            root.join("target/release/egret")
        }
    };
    if !binary.is_file() {
        bail!("{} is not a file", binary.display());
    }
    let work = root.join("target/egret-image");
    let staging = work.join("rootfs");
    if staging.exists() {
        fs::remove_dir_all(&staging).context("clearing the previous staging directory")?;
    }
    stage(&root, &binary, &staging)?;
    let built = build(&work, &staging, &options.name, &options.output);
    // The staged tree is a copy of the binary; the archive is the product.
    let _ = fs::remove_dir_all(&staging);
    built?;
    eprintln!(
        "==> wrote {} ({}); load it with `ctr -n k8s.io image import {}`",
        options.output.display(),
        options.name,
        options.output.display()
    );
    Ok(())
}

/// Lays out the image's root filesystem in `staging`.
fn stage(root: &Path, binary: &Path, staging: &Path) -> anyhow::Result<()> {
    let put = |src: &Path, dst: &str| -> anyhow::Result<()> {
        let target = staging.join(dst.trim_start_matches('/'));
        fs::create_dir_all(target.parent().expect("absolute image path"))?;
        // fs::copy follows symlinks: the image gets the file under the path
        // the loader asks for, whatever the host's symlink layout is.
        fs::copy(src, &target).with_context(|| format!("copying {} to {dst}", src.display()))?;
        Ok(())
    };
    put(binary, BINARY_IN_IMAGE)?;
    for library in shared_libraries(binary)? {
        let in_image = library.to_str().context("library path is not UTF-8")?;
        put(&library, in_image)?;
    }
    let rules = root.join("rules");
    if rules.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(&rules)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().expect("file name").to_string_lossy();
            put(&file, &format!("{RULES_IN_IMAGE}/{name}"))?;
        }
    }
    let ca = Path::new(CA_BUNDLE);
    if ca.is_file() {
        put(ca, CA_BUNDLE)?;
    } else {
        eprintln!(
            "note: {CA_BUNDLE} missing (apt-get install ca-certificates); HTTPS webhooks need a CA bundle"
        );
    }
    // Mount points the DaemonSet uses; empty directories in a read-only root.
    for dir in ["etc/egret/rules.d", "etc/egret/secrets", "host/etc"] {
        fs::create_dir_all(staging.join(dir))?;
    }
    Ok(())
}

/// The shared objects `ldd` lists for `binary` (none for a static build).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let all = format!("{text}{}", String::from_utf8_lossy(&output.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {all}", binary.display());
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or the
        // loader itself, `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO
        // (`linux-vdso.so.1 (0x…)`) has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

fn build(work: &Path, staging: &Path, name: &str, output: &Path) -> anyhow::Result<()> {
    let policy = work.join("policy.json");
    fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let buildah = |args: &[&str]| -> anyhow::Result<String> {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(work.join("storage"))
            .arg("--runroot")
            .arg(work.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("BUILDAH_ISOLATION", "chroot");
        let out = cmd
            .output()
            .context("running buildah (install it with scripts/setup-deploy.sh)")?;
        if !out.status.success() {
            bail!(
                "buildah {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision = git_revision().unwrap_or_else(|| "unknown".into());
    let version = env!("CARGO_PKG_VERSION");
    let container = format!("egret-image-{}", std::process::id());
    eprintln!("==> buildah from scratch");
    buildah(&["from", "--name", &container, "scratch"])?;
    let result = (|| -> anyhow::Result<()> {
        let staged = format!("{}/", staging.display());
        buildah(&["copy", "--chown", "0:0", &container, &staged, "/"])?;
        let labels = [
            "org.opencontainers.image.title=egret".to_owned(),
            "org.opencontainers.image.description=eBPF runtime egress monitor for Kubernetes nodes"
                .to_owned(),
            format!("org.opencontainers.image.version={version}"),
            format!("org.opencontainers.image.revision={revision}"),
            "org.opencontainers.image.licenses=Apache-2.0".to_owned(),
        ];
        let mut config: Vec<String> = vec![
            "config".into(),
            "--entrypoint".into(),
            format!(r#"["{BINARY_IN_IMAGE}", "run"]"#),
            "--cmd".into(),
            String::new(),
            "--created-by".into(),
            "cargo xtask image".into(),
            "--workingdir".into(),
            "/".into(),
            "--user".into(),
            "0:0".into(),
            "--env".into(),
            format!("SSL_CERT_FILE={CA_BUNDLE}"),
            "--port".into(),
            "9464/tcp".into(),
            "--os".into(),
            "linux".into(),
            "--arch".into(),
            oci_arch().into(),
        ];
        for label in &labels {
            config.push("--label".into());
            config.push(label.clone());
        }
        config.push(container.clone());
        buildah(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
        eprintln!("==> buildah commit {name}");
        buildah(&["commit", "--quiet", "--format", "oci", &container, name])?;
        Ok(())
    })();
    // The working container is not needed whether or not the commit worked.
    let _ = buildah(&["rm", &container]);
    result?;
    if let Some(parent) = output.parent() {
        fs::create_dir_all(parent)?;
    }
    if output.exists() {
        fs::remove_file(output)?;
    }
    let policy_arg = format!("--signature-policy={}", policy.display());
    let destination = format!("oci-archive:{}:{name}", output.display());
    eprintln!("==> buildah push {destination}");
    buildah(&["push", "--quiet", &policy_arg, name, &destination])?;
    // Keep the private store small: the archive is the product.
    let _ = buildah(&["rmi", "--force", name]);
    Ok(())
}

fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .current_dir(root())
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f02)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f02)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }
}
