//! The image built by `cargo xtask image`, run under containerd the way the
//! DaemonSet runs it.
use super::*;

// ---------------------------------------------------------------------------
// The image under containerd, run the way the DaemonSet runs it (root)

/// Kills and deletes a container on drop.
struct Running<'a> {
    containerd: &'a Containerd,
    id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.containerd.remove(&self.id);
    }
}

/// `cargo xtask image`, in its own target directory so it never waits for
/// the lock of the `cargo test` that runs this.
fn build_image(binary: &Path, output: &Path, name: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args(["run", "--quiet", "-p", "xtask", "--", "image", "--binary"])
        .arg(binary)
        .arg("--output")
        .arg(output)
        .args(["--name", name])
        .env("CARGO_TARGET_DIR", repo().join("target/xtask-e2e"))
        .output()
        .expect("cargo xtask image");
    assert!(
        out.status.success(),
        "cargo xtask image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(output.is_file(), "{} not written", output.display());
}

/// The shipped egret.yaml with only what a test machine needs changed: the
/// listen port (the node's 9464 may be taken), audit on stdout so events
/// can be read, and the webhook pointed at a closed loopback port (the
/// example URL must never be resolved from a test).
fn test_config(port: u16) -> String {
    let text = fs::read_to_string(deploy().join("egret.yaml")).unwrap();
    let shipped_url = "https://soar.example.internal/egret";
    assert!(text.contains(shipped_url));
    let text = text
        .replace(shipped_url, "https://127.0.0.1:9/egret")
        .replace("listen: 0.0.0.0:9464", &format!("listen: 127.0.0.1:{port}"))
        .replace("audit: {path: \"\",", "audit: {path: \"-\",");
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains("path: \"-\""));
    // Network safety: no webhook may point anywhere but loopback.
    for line in text.lines().filter(|l| l.contains("url:")) {
        assert!(
            line.contains("://127.0.0.1:"),
            "a webhook URL this test would call: {line}"
        );
    }
    text
}

#[test]
fn image_runs_under_containerd_like_the_daemonset() {
    const TEST: &str = "image_runs_under_containerd_like_the_daemonset";
    if !support::privileged(TEST)
        || !have_tool(TEST, Command::new("buildah").arg("--version"), "buildah")
    {
        return;
    }
    let containerd = Containerd::start();
    let work = containerd.dir().join("deploy");
    fs::create_dir_all(&work).unwrap();
    let image = format!("localhost/egret:e2e-{}", std::process::id());
    let archive = work.join("egret-image.tar");
    build_image(Path::new(crate::support::agent_path()), &archive, &image);
    let imported = containerd.ctr(&["image", "import", &archive.display().to_string()]);
    assert!(imported.status.success(), "{imported:?}");

    // What the DaemonSet mounts: config (ConfigMap), rules (ConfigMap),
    // webhook secrets (Secret), and the host paths.
    let port = free_port();
    let config = work.join("egret.yaml");
    fs::write(&config, test_config(port)).unwrap();
    let secrets = work.join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    fs::write(secrets.join("token"), "e2e-token\n").unwrap();
    fs::write(secrets.join("hmac"), "e2e-hmac-key\n").unwrap();
    let cgroup = support::cgroup_root();
    let mounts = [
        (config.clone(), "/etc/egret/egret.yaml"),
        (deploy().join("rules"), "/etc/egret/rules.d"),
        (secrets.clone(), "/etc/egret/secrets"),
        (cgroup.clone(), "/sys/fs/cgroup"),
        (PathBuf::from("/sys/kernel/tracing"), "/sys/kernel/tracing"),
        (
            containerd.socket().to_path_buf(),
            "/run/containerd/containerd.sock",
        ),
        (PathBuf::from("/etc/passwd"), "/host/etc/passwd"),
    ];

    let caps = daemonset_capabilities();
    let id = unique_id("agent");
    let log = work.join("agent.log");
    let mut args: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        format!("--log-uri=file://{}", log.display()),
        // hostNetwork and hostPID (ctr cannot say "host pid", so the
        // container joins this test's pid namespace, the host's).
        "--net-host".into(),
        format!("--with-ns=pid:/proc/{}/ns/pid", std::process::id()),
        // readOnlyRootFilesystem, seccomp RuntimeDefault (containerd's
        // default profile); no-new-privileges is ctr's default.
        "--read-only".into(),
        "--seccomp".into(),
        // The image's entrypoint (`/egret run`) with the config by env:
        // ctr replaces the whole command line when given arguments.
        "--env=EGRET_CONFIG=/etc/egret/egret.yaml".into(),
        "--env=NODE_NAME=e2e-node".into(),
    ];
    // capabilities: drop [ALL], add [...]. ctr 1.6 has no "ALL", so every
    // capability the kernel knows that is not added is dropped by name.
    for cap in CAPABILITIES {
        if caps.iter().any(|c| c == cap) {
            args.push(format!("--cap-add=CAP_{cap}"));
        } else {
            args.push(format!("--cap-drop=CAP_{cap}"));
        }
    }
    for (src, dst) in &mounts {
        let options = if src.is_dir() { "rbind:ro" } else { "bind:ro" };
        args.push(format!(
            "--mount=type=bind,src={},dst={dst},options={options}",
            src.display()
        ));
    }
    args.push(image.clone());
    args.push(id.clone());
    let run = containerd.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let _agent = Running {
        containerd: &containerd,
        id: id.clone(),
    };
    assert!(
        run.status.success(),
        "ctr run: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        containerd.log()
    );
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !log_text().contains("egret ready") {
        assert!(
            Instant::now() < deadline && !log_text().contains("egret: error"),
            "agent container not ready; its output:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_status(port, "/readyz"), 200);
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("egret_"), "{metrics}");

    // The agent process: the DaemonSet's capabilities, nothing else, no
    // new privileges, a seccomp filter.
    let tasks = containerd.ctr(&["task", "ls"]);
    let tasks = String::from_utf8_lossy(&tasks.stdout);
    let agent_pid: u32 = tasks
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id.as_str())).then(|| f.next().unwrap().parse().unwrap())
        })
        .expect("agent task");
    let mask = format!("{:016x}", cap_mask(&caps));
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            proc_status_field(agent_pid, set).as_deref(),
            Some(mask.as_str()),
            "{set}"
        );
    }
    assert_eq!(
        proc_status_field(agent_pid, "NoNewPrivs").as_deref(),
        Some("1")
    );
    assert_eq!(
        proc_status_field(agent_pid, "Seccomp").as_deref(),
        Some("2")
    );

    // Another container, in its own empty network namespace: TEST-NET is
    // unreachable there, and the hook sees the attempt anyway.
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let pod = Pod {
        name: "shop-web-1".into(),
        namespace: "shop".into(),
        uid: "0b6c1f8e-2a5d-4f3c-9e7a-1d2c3b4a5f60".into(),
    };
    let app = unique_id("app");
    let spec = RunSpec::new(
        &app,
        Source::Rootfs(rootfs),
        &["sh", "-c", "nc -w1 198.51.100.7 443; sleep 1"],
    )
    .in_pod(&pod, "web");
    let output = containerd.run(&spec);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unreachable"),
        "{output:?}"
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let event = loop {
        let found = log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["fd.sip"] == "198.51.100.7" && v["proc.name"] == "nc");
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no event from the other container; agent output:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(event["fd.sport"], 443, "{event}");
    assert_eq!(event["proc.cmdline"], "nc -w1 198.51.100.7 443", "{event}");
    assert_eq!(event["container.id"], &app[..12], "{event}");
    assert_eq!(event["container.name"], "web", "{event}");
    assert_eq!(event["k8s.pod.name"], pod.name, "{event}");
    assert_eq!(event["k8s.ns.name"], pod.namespace, "{event}");
    assert_eq!(event["container.host_network"], false, "{event}");
    assert!(
        !log_text().contains("egret: error"),
        "agent output:\n{}",
        log_text()
    );
}
