use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// The release agent and probe that the bench and the 6.1 guest run: one
/// command, so `cargo xtask test` builds them once for both.
pub fn build_release_binaries(step: &str) -> anyhow::Result<()> {
    run_step(
        step,
        cargo().args([
            "build",
            "--release",
            "-p",
            "egret",
            "-p",
            "egret-probe",
            "--bins",
        ]),
    )
}

pub fn run_step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {name}");
    let status = cmd.status().with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

pub fn lint() -> anyhow::Result<()> {
    run_step("rustfmt", cargo().args(["fmt", "--all", "--check"]))?;
    run_step(
        "clippy (host crates)",
        cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
    )?;
    // The eBPF crate only compiles for the BPF target, with the same cfg
    // aya-build passes; a separate target dir keeps host builds cached.
    run_step(
        "clippy (eBPF crate)",
        Command::new("rustup")
            .current_dir(root())
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "-p",
                "egret-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/ebpf-lint",
                "--",
                "-D",
                "warnings",
            ])
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"",
            )
            .env_remove("RUSTC")
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !args.iter().any(|a| a == "--no-lint") {
        lint()?;
    }
    let root_user = egret_testkit::is_root();
    if !root_user {
        if std::env::var_os("CI").is_some() {
            bail!("CI must run the suite as root: the end-to-end tests load eBPF programs");
        }
        eprintln!("note: not root; privileged end-to-end tests will print skip reasons");
    }
    run_step(
        "tests (unit + end-to-end)",
        cargo().args(["test", "--workspace", "--exclude", "egret-ebpf"]),
    )?;
    if !args.iter().any(|a| a == "--no-fuzz") {
        fuzz(FUZZ_SECONDS_CI)?;
    }
    if root_user && !args.iter().any(|a| a == "--no-bench") {
        // Keeps the benchmark harness from rotting; it asserts nothing
        // about timings.
        crate::bench::run(&["--short".to_string()])?;
    }
    if !args.iter().any(|a| a == "--no-vm") {
        if root_user {
            // After the bench: both use the same release build.
            crate::vm::run(&[])?;
        } else {
            eprintln!("note: not root; skipping the Linux 6.1 guest (vm-test)");
        }
    }
    Ok(())
}

/// Seconds per fuzz target in CI: short, but long enough to run the
/// parser and loader over many thousands of generated inputs.
const FUZZ_SECONDS_CI: u32 = 20;

/// A short cargo-fuzz pass over the rule engine's condition parser and
/// YAML loader, and the agent's DNS message parser (nightly and
/// cargo-fuzz, installed by scripts/setup.sh).
pub fn fuzz(seconds: u32) -> anyhow::Result<()> {
    let targets = [
        ("agent/rules-engine", "condition"),
        ("agent/rules-engine", "loader"),
        ("agent", "dns_message"),
    ];
    for (dir, target) in targets {
        let dir = root().join(dir);
        run_step(
            &format!("fuzz {target} ({seconds} s)"),
            Command::new("rustup")
                .current_dir(&dir)
                .args(["run", "nightly", "cargo", "fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={seconds}"))
                .env_remove("RUSTC")
                .env_remove("CARGO")
                .env_remove("RUSTUP_TOOLCHAIN"),
        )?;
    }
    Ok(())
}
