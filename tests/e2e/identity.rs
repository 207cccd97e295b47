//! Issue 3 building blocks against a real containerd: metadata read back
//! over gRPC, the cgroup id → container chain, user names from a
//! container's own passwd, and graceful degradation while containerd is
//! down.
use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use egret::identity::{
    cgroups::{CgroupPaths, CgroupPathsConfig},
    container_cache::{CacheConfig, Lookup, Unknown},
    containerd::{ContainerdConfig, ContainerdMetadata},
    metadata::{ContainerKind, ContainerMeta},
    resolver::{ContainerLookup, IdentityResolver},
    users::{UserNames, UserNamesConfig},
};
use tokio_util::sync::CancellationToken;

use crate::support::{
    self,
    containerd::{
        APP_UID, APP_USER, Containerd, Pod, RunSpec, Source, busybox_rootfs, container_cgroup_v2,
        unique_id,
    },
};

const WAIT: Duration = Duration::from_secs(15);
/// A registry with a port, to exercise the repository/tag split end to end.
const IMAGE: &str = "registry.test:5000/egret/busybox:1.36";

/// The module under test, running on its own runtime; shut down on drop.
struct Metadata {
    handle: Arc<ContainerdMetadata>,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Runtime,
}

impl Metadata {
    fn connect(containerd: &Containerd) -> Metadata {
        // RUST_LOG=egret=debug shows the worker's side when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let config = ContainerdConfig {
            socket: containerd.socket().to_path_buf(),
            request_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            delete_grace: Duration::ZERO,
            cache: CacheConfig {
                retry_after_failure: Duration::from_millis(200),
                retry_after_not_found: Duration::from_millis(200),
                ..CacheConfig::default()
            },
            ..ContainerdConfig::default()
        };
        let (handle, worker) = ContainerdMetadata::new(config).expect("valid config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let shutdown = CancellationToken::new();
        runtime.spawn(worker.run(shutdown.clone()));
        Metadata {
            handle,
            shutdown,
            runtime,
        }
    }

    /// Polls the non-blocking lookup until the container is known.
    fn wait_known(&self, id: &str) -> Arc<ContainerMeta> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Lookup::Known(meta) = self.handle.lookup(id) {
                return meta;
            }
            assert!(Instant::now() < deadline, "{id} never became known");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Metadata {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Lets the worker see the cancellation before the runtime goes.
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    }
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod() -> Pod {
    Pod {
        name: "web-0".into(),
        namespace: "shop".into(),
        uid: "0c6b7e5f-1234-4abc-9def-0123456789ab".into(),
    }
}

#[test]
fn containerd_metadata_for_real_containers() {
    if !support::privileged("containerd_metadata_for_real_containers") {
        return;
    }
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    containerd.import_image(&rootfs, IMAGE);
    let pod = pod();

    let sandbox_id = unique_id("sandbox");
    let sandbox = RunSpec::new(
        &sandbox_id,
        Source::Rootfs(rootfs.clone()),
        &["sleep", "120"],
    )
    .sandbox_of(&pod)
    .label("app", "web")
    .label("tier", "frontend");
    let sandbox_pid = containerd.run_detached(&sandbox);

    // The workload joins the sandbox's network namespace, as in a real pod,
    // and names its sandbox the way the CRI plugin does.
    let app_id = unique_id("app");
    let app = RunSpec::new(&app_id, Source::Image(IMAGE.into()), &["sleep", "120"])
        .in_pod(&pod, "nginx")
        .label("io.cri-containerd.kind", "container")
        .annotation("io.kubernetes.cri.sandbox-id", &sandbox_id)
        .annotation("io.kubernetes.cri.container-type", "container")
        .join_netns(PathBuf::from(format!("/proc/{sandbox_pid}/ns/net")));
    let app_pid = containerd.run_detached(&app);

    let host_id = unique_id("hostnet");
    let host = RunSpec::new(&host_id, Source::Rootfs(rootfs.clone()), &["sleep", "120"])
        .in_pod(&pod, "node-agent")
        .label("io.kubernetes.sandbox.id", &sandbox_id)
        .net_host();
    containerd.run_detached(&host);

    let metadata = Metadata::connect(&containerd);
    let meta = metadata.wait_known(&app_id);
    assert_eq!(meta.name, "nginx");
    assert_eq!(meta.kind, ContainerKind::Container);
    assert_eq!(meta.image.as_deref(), Some(IMAGE));
    let image = meta.image_ref.as_ref().expect("image parsed");
    assert_eq!(image.repository, "registry.test:5000/egret/busybox");
    assert_eq!(image.tag.as_deref(), Some("1.36"));
    let pod_meta = meta.pod.as_ref().expect("pod metadata");
    assert_eq!(pod_meta.name.as_deref(), Some("web-0"));
    assert_eq!(pod_meta.namespace.as_deref(), Some("shop"));
    assert_eq!(pod_meta.uid.as_deref(), Some(pod.uid.as_str()));
    assert_eq!(pod_meta.sandbox_id.as_deref(), Some(sandbox_id.as_str()));
    let labels: Vec<(&str, &str)> = pod_meta
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("app", "web"), ("tier", "frontend")]);
    assert_eq!(meta.host_network, Some(false), "joined the sandbox's netns");

    let sandbox_meta = metadata.wait_known(&sandbox_id);
    assert_eq!(sandbox_meta.kind, ContainerKind::Sandbox);
    assert_eq!(
        sandbox_meta.image, None,
        "--rootfs containers have no image"
    );
    assert_eq!(sandbox_meta.host_network, Some(false), "own empty netns");

    let host_meta = metadata.wait_known(&host_id);
    assert_eq!(host_meta.host_network, Some(true), "--net-host");
    assert_eq!(host_meta.name, "node-agent");
    assert_eq!(
        host_meta
            .pod
            .as_ref()
            .and_then(|p| p.labels.get("app"))
            .map(String::as_str),
        Some("web"),
        "sandbox found through the label form too"
    );

    // The whole per-event chain: cgroup id (the cgroup directory's inode,
    // as the kernel reports it) → path → container id → metadata.
    let cgroup_dir = container_cgroup_v2(&app_id);
    let cgroup_id = std::fs::metadata(&cgroup_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", cgroup_dir.display()))
        .ino();
    let resolver = IdentityResolver::new(
        CgroupPaths::from_mountinfo(CgroupPathsConfig::default()).expect("cgroup2 mount"),
        Some(metadata.handle.clone()),
    );
    let identity = resolver.resolve(cgroup_id, app_pid);
    assert_eq!(identity.container_id(), Some(app_id.as_str()));
    match &identity.container {
        ContainerLookup::Known(found) => assert_eq!(found.name, "nginx"),
        other => panic!("expected metadata, got {other:?}"),
    }

    // User names come from the container's passwd, not the host's.
    let users = UserNames::new(UserNamesConfig::default());
    assert_eq!(users.lookup(app_pid, APP_UID).as_deref(), Some(APP_USER));
    assert_eq!(
        users.lookup(std::process::id(), APP_UID),
        None,
        "host has no such user"
    );

    // A one-shot container in its own empty netns: a TEST-NET connect
    // fails with ENETUNREACH and never leaves the machine.
    let probe_id = unique_id("nc");
    let probe = RunSpec::new(
        &probe_id,
        Source::Rootfs(rootfs.clone()),
        &["nc", "-w1", "198.51.100.7", "443"],
    )
    .in_pod(&pod, "probe");
    let output = containerd.run(&probe);
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");

    // Deletion reaches the cache through the event stream.
    containerd.remove(&host_id);
    wait_for("deleted container to leave the cache", || {
        metadata.handle.cached(&host_id).is_none()
    });
}

#[test]
fn containerd_restart_degrades_and_recovers() {
    if !support::privileged("containerd_restart_degrades_and_recovers") {
        return;
    }
    let mut containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let before_id = unique_id("before");
    containerd.run_detached(
        &RunSpec::new(
            &before_id,
            Source::Rootfs(rootfs.clone()),
            &["sleep", "120"],
        )
        .in_pod(&pod(), "before"),
    );
    let metadata = Metadata::connect(&containerd);
    metadata.wait_known(&before_id);
    let stats = metadata.handle.stats();
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);

    containerd.stop();
    wait_for("disconnect", || !metadata.handle.is_connected());
    // Known containers stay known; new ones are unknown, promptly, and the
    // failure is counted.
    assert!(matches!(
        metadata.handle.lookup(&before_id),
        Lookup::Known(_)
    ));
    let failures = stats.fetch_failures.load(Ordering::Relaxed);
    let started = Instant::now();
    assert!(matches!(
        metadata.handle.lookup("ghost"),
        Lookup::Unknown(_)
    ));
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "lookup blocked"
    );
    wait_for("a counted enrichment failure", || {
        stats.fetch_failures.load(Ordering::Relaxed) > failures
    });
    wait_for("failed reconnect attempts", || {
        stats.connect_failures.load(Ordering::Relaxed) >= 2
    });

    containerd.restart();
    wait_for("reconnect", || {
        metadata.handle.is_connected() && stats.connects.load(Ordering::Relaxed) == 2
    });
    let after_id = unique_id("after");
    containerd.run_detached(
        &RunSpec::new(&after_id, Source::Rootfs(rootfs), &["sleep", "120"]).in_pod(&pod(), "after"),
    );
    assert_eq!(metadata.wait_known(&after_id).name, "after");
    assert_eq!(metadata.wait_known(&before_id).name, "before");
    // containerd now answers for the ghost: it does not exist.
    wait_for("ghost to be reported missing", || {
        metadata.handle.lookup("ghost") == Lookup::Unknown(Unknown::NotFound)
    });
}
