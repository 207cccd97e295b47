//! Issue 3 end to end: the running agent attributes connections made inside
//! real containers (containerd + runc) to container, pod and namespace.
//!
//! Containers run in their own empty network namespace, where a TEST-NET
//! connect fails with ENETUNREACH (the hook still fires); the host-network
//! container only ever connects to loopback.
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    self, TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    containerd::{Containerd, Pod, RunSpec, Source, busybox_rootfs, unique_id},
    netns::{NetNs, V4_SERVER},
};

const IMAGE: &str = "registry.test:5000/egret/busybox:1.36";

fn pod() -> Pod {
    Pod {
        name: "checkout-7d9f".into(),
        namespace: "payments".into(),
        uid: "5f1e2d3c-4b5a-4968-8776-655443322110".into(),
    }
}

fn agent_for(containerd: &Containerd, extra: &[&str]) -> Agent {
    let socket = containerd.socket().display().to_string();
    let mut args = vec!["run", "--audit", "-", "--containerd-socket", &socket];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

fn wait_for(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    agent.wait_json(pred, EVENT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no event {what} within {EVENT_TIMEOUT:?}; stderr:\n{}",
            agent.stderr().join("\n")
        )
    })
}

#[test]
fn container_connections_name_container_pod_and_namespace() {
    if !support::privileged("container_connections_name_container_pod_and_namespace") {
        return;
    }
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    containerd.import_image(&rootfs, IMAGE);
    let agent = agent_for(&containerd, &[]);
    let pod = pod();

    let sandbox_id = unique_id("sandbox");
    let sandbox = RunSpec::new(
        &sandbox_id,
        Source::Rootfs(rootfs.clone()),
        &["sleep", "60"],
    )
    .sandbox_of(&pod)
    .label("app", "checkout");
    containerd.run_detached(&sandbox);

    // Connects as soon as it starts: the create/start events must have made
    // the container known by then. (A container whose only process lives a
    // few milliseconds: `one_shot_container_keeps_container_and_pod`.)
    let app_id = unique_id("app");
    let app = RunSpec::new(
        &app_id,
        Source::Image(IMAGE.into()),
        &["sh", "-c", "nc -w1 198.51.100.7 443; sleep 1"],
    )
    .in_pod(&pod, "payment-api")
    .label("io.cri-containerd.kind", "container")
    .annotation("io.kubernetes.cri.sandbox-id", &sandbox_id);
    let output = containerd.run(&app);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("unreachable"),
        "nc cannot reach TEST-NET from an empty netns: {output:?}"
    );

    let short = &app_id[..12];
    let event = wait_for(&agent, "from the app container", |v| {
        v["fd.sip"] == "198.51.100.7" && v["proc.name"] == "nc"
    });
    assert_eq!(event["container.id"], short, "{event}");
    assert_eq!(event["container.name"], "payment-api", "{event}");
    assert_eq!(event["k8s.pod.name"], pod.name, "{event}");
    assert_eq!(event["k8s.ns.name"], pod.namespace, "{event}");
    assert_eq!(event["k8s.pod.uid"], pod.uid, "{event}");
    assert_eq!(event["k8s.pod.labels"]["app"], "checkout", "{event}");
    assert_eq!(event["container.image"], IMAGE, "{event}");
    assert_eq!(
        event["container.image.repository"],
        "registry.test:5000/egret/busybox"
    );
    assert_eq!(event["container.image.tag"], "1.36");
    assert_eq!(event["container.host_network"], false, "{event}");
    // nc was the container's only process and is gone: the host answers.
    assert_eq!(
        event["user.name"],
        "root",
        "{event}\n{}",
        agent.stderr().join("\n")
    );
    assert_eq!(event["proc.cmdline"], "nc -w1 198.51.100.7 443", "{event}");
    assert_eq!(event["fd.sport"], 443);

    // A host process in the same run is reported as `host`.
    let ns = NetNs::new("host");
    let (pid, _) = ns.run(&support::probe_path(), &["tcp", &format!("{V4_SERVER}:80")]);
    let event = agent.wait_event_for_pid(pid);
    assert_eq!(event["container.id"], "host", "{event}");
    assert_eq!(event["container.name"], Value::Null, "{event}");
    assert_eq!(event["container.host_network"], Value::Null, "{event}");
}

/// Issue 13 item 6: a container whose only process connects and exits at
/// once (`kubectl run --rm` style) keeps its container id, pod and
/// namespace: the cgroup's path reached the agent with the kernel's
/// `cgroup_mkdir` record, before the container's process existed.
#[test]
fn one_shot_container_keeps_container_and_pod() {
    if !support::privileged("one_shot_container_keeps_container_and_pod") {
        return;
    }
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    containerd.import_image(&rootfs, IMAGE);
    let agent = agent_for(&containerd, &[]);
    let pod = pod();
    for round in 0..3 {
        let app_id = unique_id("oneshot");
        // nc is the container's first and only process: no shell, no sleep.
        let dest = format!("198.51.100.{}", 130 + round);
        let app = RunSpec::new(
            &app_id,
            Source::Image(IMAGE.into()),
            &["nc", "-w1", &dest, "443"],
        )
        .in_pod(&pod, "oneshot");
        let output = containerd.run(&app);
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("unreachable"),
            "{output:?}"
        );
        let event = wait_for(&agent, "from the one-shot container", |v| {
            v["fd.sip"] == dest.as_str() && v["proc.name"] == "nc"
        });
        let context = || format!("{event}\n{}", agent.stderr().join("\n"));
        assert_eq!(event["container.id"], app_id[..12], "{}", context());
        assert_eq!(event["container.name"], "oneshot", "{}", context());
        assert_eq!(event["k8s.pod.name"], pod.name, "{}", context());
        assert_eq!(event["k8s.ns.name"], pod.namespace, "{}", context());
    }
}

/// Issue 13 item 5: a binary copied into a running container (overlayfs
/// upper layer, not from the image) is reported with its true path and
/// `proc.is_exe_upper_layer`; the image's own binary is in the lower layer.
#[test]
fn binary_dropped_into_a_container_is_from_the_upper_layer() {
    if !support::privileged("binary_dropped_into_a_container_is_from_the_upper_layer") {
        return;
    }
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    containerd.import_image(&rootfs, IMAGE);
    let agent = agent_for(&containerd, &[]);
    let app_id = unique_id("dropper");
    // busybox runs the applet named by argv[1] when its own name starts
    // with "busybox", so the copy still makes the nc attempt.
    let script = "nc -w1 198.51.100.141 443; \
        cp /bin/busybox /bin/busybox-dropped && /bin/busybox-dropped nc -w1 198.51.100.142 443";
    let app = RunSpec::new(&app_id, Source::Image(IMAGE.into()), &["sh", "-c", script]);
    containerd.run(&app);

    let from_image = wait_for(&agent, "from the image's nc", |v| {
        v["fd.sip"] == "198.51.100.141" && v["container.id"] == app_id[..12]
    });
    let dropped = wait_for(&agent, "from the dropped copy", |v| {
        v["fd.sip"] == "198.51.100.142" && v["container.id"] == app_id[..12]
    });
    let context = || format!("{from_image}\n{dropped}\n{}", agent.stderr().join("\n"));
    assert_eq!(
        dropped["proc.exepath"],
        "/bin/busybox-dropped",
        "{}",
        context()
    );
    assert_eq!(dropped["proc.is_exe_upper_layer"], true, "{}", context());
    assert_eq!(dropped["proc.is_exe_lower_layer"], false, "{}", context());
    // The image's applet resolves to the busybox binary it links to.
    assert_eq!(from_image["proc.exepath"], "/bin/busybox", "{}", context());
    assert_eq!(
        from_image["proc.is_exe_upper_layer"],
        false,
        "{}",
        context()
    );
    assert_eq!(from_image["proc.is_exe_lower_layer"], true, "{}", context());
}

/// Issue 10: the seed rule, verbatim, names no pod in its output; the
/// shipped `append_output` default puts the workload in `output_fields` of
/// the webhook payload, and `custom_fields` add the cluster.
#[test]
fn seed_rule_webhook_payload_names_the_pod() {
    if !support::privileged("seed_rule_webhook_payload_names_the_pod") {
        return;
    }
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    containerd.import_image(&rootfs, IMAGE);
    let dir = TempDir::new("seed-pod");
    let rules = dir.write("seed.yaml", crate::rules::SEED_RULE);
    let config = dir.write("egret.yaml", "custom_fields: {cluster: e2e-cluster}\n");
    let receiver = support::http::Receiver::start().expect("webhook receiver");
    let webhook = receiver.url();
    let agent = agent_for(
        &containerd,
        &[
            "--config",
            &config.display().to_string(),
            "--rules",
            &rules.display().to_string(),
            "--webhook",
            &webhook,
        ],
    );
    let pod = Pod {
        name: "seed-web-5c7d".into(),
        namespace: "storefront".into(),
        uid: "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d".into(),
    };
    let id = unique_id("seedapp");
    let spec = RunSpec::new(
        &id,
        Source::Image(IMAGE.into()),
        &["sh", "-c", "nc -w1 203.0.113.44 443; sleep 1"],
    )
    .in_pod(&pod, "web");
    containerd.run(&spec);
    let short = id[..12].to_owned();
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    let payload = loop {
        let found = receiver
            .requests()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .find(|v| {
                v["rule"] == "Outbound Connection in Container"
                    && v["output_fields"]["container.id"] == short.as_str()
            });
        if found.is_some() || std::time::Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    .unwrap_or_else(|| {
        panic!(
            "no webhook payload for container {short}; stderr:\n{}",
            agent.stderr().join("\n")
        )
    });
    println!("payload: {payload}");
    let fields = &payload["output_fields"];
    assert_eq!(fields["k8s.pod.name"], pod.name, "{payload}");
    assert_eq!(fields["k8s.ns.name"], pod.namespace, "{payload}");
    assert_eq!(fields["container.name"], "web", "{payload}");
    assert_eq!(
        fields["container.image.repository"], "registry.test:5000/egret/busybox",
        "{payload}"
    );
    assert_eq!(fields["fd.name"], "203.0.113.44:443", "{payload}");
    assert_eq!(fields["cluster"], "e2e-cluster", "{payload}");
    // The rule's own output text is unchanged (no extra_output by default).
    assert!(
        payload["output"]
            .as_str()
            .is_some_and(|o| o.ends_with("connection=203.0.113.44:443 user=root)")),
        "{payload}"
    );
}

#[test]
fn host_network_container_is_flagged() {
    if !support::privileged("host_network_container_is_flagged") {
        return;
    }
    let containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    // Loopback is ignored in the kernel by default; this test needs to see it.
    let agent = agent_for(&containerd, &["--no-builtin-ignore"]);
    let pod = pod();

    let id = unique_id("hostnet");
    // In the host's network namespace: only ever loopback.
    let spec = RunSpec::new(
        &id,
        Source::Rootfs(rootfs),
        &["sh", "-c", "nc -w1 127.0.0.1 9; sleep 1"],
    )
    .in_pod(&pod, "node-exporter")
    .net_host();
    containerd.run(&spec);
    let event = wait_for(&agent, "from the host-network container", |v| {
        v["proc.name"] == "nc" && v["fd.sip"] == "127.0.0.1" && v["fd.sport"] == 9
    });
    assert_eq!(event["container.id"], &id[..12], "{event}");
    assert_eq!(event["container.host_network"], true, "{event}");
    assert_eq!(event["container.name"], "node-exporter", "{event}");
}

#[test]
fn events_keep_flowing_while_containerd_is_down() {
    if !support::privileged("events_keep_flowing_while_containerd_is_down") {
        return;
    }
    let mut containerd = Containerd::start();
    let rootfs = busybox_rootfs(&containerd.dir().join("rootfs"));
    let agent = agent_for(&containerd, &[]);
    let pod = pod();

    // A long-running workload that keeps trying to reach a TEST-NET address
    // from its own empty netns.
    let id = unique_id("looper");
    let spec = RunSpec::new(
        &id,
        Source::Rootfs(rootfs),
        &[
            "sh",
            "-c",
            "while true; do nc -w1 203.0.113.9 8443; sleep 0.2; done",
        ],
    )
    .in_pod(&pod, "worker");
    containerd.run_detached(&spec);
    wait_for(&agent, "while containerd is up", |v| {
        v["fd.sip"] == "203.0.113.9" && v["container.name"] == "worker"
    });

    containerd.stop();
    let before = agent.json_lines().len();
    wait_until_more_events(&agent, before);
    let latest = agent
        .json_lines()
        .into_iter()
        .rev()
        .find(|v| v["fd.sip"] == "203.0.113.9")
        .expect("latest event");
    assert_eq!(latest["proc.name"], "nc", "{latest}");
    // busybox's shell runs applets by re-executing itself (/proc/self/exe):
    // the executable is the file the kernel runs, /bin/sh's target.
    assert_eq!(latest["proc.exepath"], "/bin/busybox", "{latest}");
    assert_eq!(
        latest["proc.cmdline"], "nc -w1 203.0.113.9 8443",
        "{latest}"
    );
    assert_eq!(latest["user.name"], "root", "{latest}");
    assert_eq!(latest["container.id"], &id[..12], "{latest}");
    containerd.restart();
}

/// Waits until at least three more events for the looper arrived after
/// `before` lines had been seen.
fn wait_until_more_events(agent: &Agent, before: usize) {
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let fresh = agent.json_lines()[before.min(agent.json_lines().len())..]
            .iter()
            .filter(|v| v["fd.sip"] == "203.0.113.9")
            .count();
        if fresh >= 3 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events stopped after containerd went down; stderr:\n{}",
            agent.stderr().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
