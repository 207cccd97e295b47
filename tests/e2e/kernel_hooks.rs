//! Issue 2: every outbound attempt kind is seen on the real kernel, with the
//! right fields, and the agent cleans up after itself.
use std::{process::Command, time::Duration};

use serde_json::Value;

use crate::support::{
    self,
    agent::Agent,
    cgroup::TestCgroup,
    netns::{NetNs, V4_OTHER_NET, V4_SERVER, V6_SERVER},
};

fn assert_common_fields(event: &Value, pid: u32) {
    assert_eq!(event["proc.pid"], pid, "{event}");
    assert_eq!(event["proc.name"], "egret-probe", "{event}");
    assert_eq!(event["user.uid"], 0, "{event}");
    assert!(event["evt.time"].as_u64().unwrap_or(0) > 0, "{event}");
    assert!(
        event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{event}"
    );
    for field in [
        "egret.cgroup_id",
        "egret.netns_cookie",
        "egret.socket_cookie",
        "egret.mono_ns",
    ] {
        assert!(
            event[field].as_u64().unwrap_or(0) > 0,
            "{field} missing: {event}"
        );
    }
}

#[test]
fn tcp_connects_over_ipv4_and_ipv6() {
    if !support::privileged("tcp_connects_over_ipv4_and_ipv6") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = NetNs::new("tcp");
    let probe = support::probe_path();

    let (pid4, _) = ns.run(&probe, &["tcp", &format!("{V4_SERVER}:8080")]);
    let (pid6, _) = ns.run(&probe, &["tcp", &format!("[{V6_SERVER}]:8443")]);

    let v4 = agent.wait_event_for_pid(pid4);
    assert_common_fields(&v4, pid4);
    assert_eq!(v4["evt.type"], "connect");
    assert_eq!(v4["evt.hook"], "connect4");
    assert_eq!(v4["fd.l4proto"], "tcp");
    assert_eq!(v4["fd.sip"], V4_SERVER);
    assert_eq!(v4["fd.sport"], 8080);
    assert_eq!(v4["fd.typechar"], "4");
    assert_eq!(v4["fd.name"], format!("{V4_SERVER}:8080"));

    let v6 = agent.wait_event_for_pid(pid6);
    assert_common_fields(&v6, pid6);
    assert_eq!(v6["evt.hook"], "connect6");
    assert_eq!(v6["fd.sip"], V6_SERVER);
    assert_eq!(v6["fd.sport"], 8443);
    assert_eq!(v6["fd.type"], "ipv6");
    assert_eq!(v6["fd.name"], format!("[{V6_SERVER}]:8443"));
}

#[test]
fn udp_connect_and_unconnected_sendto() {
    if !support::privileged("udp_connect_and_unconnected_sendto") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = NetNs::new("udp");
    let probe = support::probe_path();

    let (connected, _) = ns.run(&probe, &["udp-connect", &format!("{V4_SERVER}:5353")]);
    let (sendto4, _) = ns.run(&probe, &["udp-sendto", &format!("{V4_SERVER}:53")]);
    let (sendto6, _) = ns.run(&probe, &["udp-sendto", &format!("[{V6_SERVER}]:53")]);

    let event = agent.wait_event_for_pid(connected);
    assert_eq!(event["evt.type"], "connect");
    assert_eq!(event["fd.l4proto"], "udp");
    assert_eq!(event["fd.sport"], 5353);

    let event = agent.wait_event_for_pid(sendto4);
    assert_common_fields(&event, sendto4);
    assert_eq!(event["evt.type"], "sendto");
    assert_eq!(event["evt.hook"], "sendmsg4");
    assert_eq!(event["fd.l4proto"], "udp");
    assert_eq!(event["fd.sip"], V4_SERVER);

    let event = agent.wait_event_for_pid(sendto6);
    assert_eq!(event["evt.hook"], "sendmsg6");
    assert_eq!(event["fd.sip"], V6_SERVER);

    // The connected socket's datagram is not re-reported by the send hook.
    std::thread::sleep(Duration::from_millis(300));
    let for_connected = agent
        .json_lines()
        .into_iter()
        .filter(|v| v["proc.pid"] == connected && v["evt.type"] != "close")
        .count();
    assert_eq!(for_connected, 1, "connected UDP flow reported once");
}

#[test]
fn ipv4_mapped_ipv6_is_reported_as_ipv4() {
    if !support::privileged("ipv4_mapped_ipv6_is_reported_as_ipv4") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = NetNs::new("mapped");
    let probe = support::probe_path();

    let (pid, _) = ns.run(&probe, &["mapped-tcp", &format!("{V4_SERVER}:9090")]);
    let event = agent.wait_event_for_pid(pid);
    assert_common_fields(&event, pid);
    assert_eq!(event["evt.hook"], "connect6", "seen on the IPv6 hook");
    assert_eq!(
        event["fd.sip"], V4_SERVER,
        "reported as the IPv4 address it is"
    );
    assert_eq!(event["fd.typechar"], "4");
    assert_eq!(event["egret.v4_mapped"], true);
}

#[test]
fn io_uring_connect_is_reported() {
    if !support::privileged("io_uring_connect_is_reported") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = NetNs::new("uring");
    let probe = support::probe_path();

    let (pid4, _) = ns.run(&probe, &["uring-connect", &format!("{V4_SERVER}:7070")]);
    let (pid6, _) = ns.run(&probe, &["uring-connect", &format!("[{V6_SERVER}]:7071")]);
    let event = agent.wait_event_for_pid(pid4);
    assert_common_fields(&event, pid4);
    assert_eq!(event["evt.type"], "connect");
    assert_eq!(event["fd.sip"], V4_SERVER);
    assert_eq!(event["fd.sport"], 7070);
    let event = agent.wait_event_for_pid(pid6);
    assert_eq!(event["fd.sip"], V6_SERVER);
}

#[test]
fn connect_results_are_the_calls_return() {
    if !support::privileged("connect_results_are_the_calls_return") {
        return;
    }
    let dir = support::TempDir::new("hooks-result");
    let agent = crate::connect_result::agent(&dir, &[]);
    let ns = NetNs::new("hooks-result");
    let probe = support::probe_path();
    let closed = format!("{V4_SERVER}:7361");
    let (blocking, _) = ns.run(&probe, &["tcp-blocking", &closed]);
    let (uring, _) = ns.run(&probe, &["uring-connect", &closed]);
    let (nonblocking, _) = ns.run(&probe, &["tcp", &closed]);
    crate::connect_result::assert_result(&agent, blocking, "ECONNREFUSED", -111);
    crate::connect_result::assert_result(&agent, uring, "ECONNREFUSED", -111);
    crate::connect_result::assert_result(&agent, nonblocking, "EINPROGRESS", -115);
}

#[test]
fn process_that_exits_right_after_connecting_keeps_pid_and_comm() {
    if !support::privileged("process_that_exits_right_after_connecting_keeps_pid_and_comm") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = NetNs::new("exit");
    let probe = support::probe_path();
    // The probe exits as soon as the attempt returns; by the time the agent
    // reads the event, the pid is gone from /proc.
    let (pid, status) = ns.run(&probe, &["tcp", &format!("{V4_SERVER}:1")]);
    assert!(status.success());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let event = agent.wait_event_for_pid(pid);
    assert_common_fields(&event, pid);
    assert_eq!(event["thread.tid"], pid, "single-threaded probe");
    // Captured by the kernel at exec, so still known after the exit.
    assert_eq!(
        event["proc.exepath"],
        probe.display().to_string(),
        "{event}"
    );
    assert_eq!(
        event["proc.cmdline"],
        format!("egret-probe tcp {V4_SERVER}:1"),
        "{event}"
    );
    assert!(event["proc.ppid"].as_u64().unwrap_or(0) > 1, "{event}");
    assert!(event["proc.pname"].is_string(), "{event}");
}

#[test]
fn ignored_destinations_never_reach_userspace() {
    if !support::privileged("ignored_destinations_never_reach_userspace") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-", "--ignore-cidr", "203.0.113.0/24"]);
    let ns = NetNs::new("ignore");
    let probe = support::probe_path();

    let (ignored, _) = ns.run(&probe, &["tcp", &format!("{V4_OTHER_NET}:80")]);
    let (loopback, _) = ns.run(&probe, &["tcp", "127.0.0.1:80"]);
    let (loopback6, _) = ns.run(&probe, &["udp-sendto", "[::1]:53"]);
    let (sentinel, _) = ns.run(&probe, &["tcp", &format!("{V4_SERVER}:80")]);
    // Events are delivered in order, so once the later sentinel is here the
    // earlier attempts would have been too.
    agent.wait_event_for_pid(sentinel);
    for pid in [ignored, loopback, loopback6] {
        assert!(
            agent.json_lines().iter().all(|v| v["proc.pid"] != pid),
            "pid {pid} should have been filtered in the kernel"
        );
    }
}

#[test]
fn sigterm_detaches_every_program() {
    if !support::privileged("sigterm_detaches_every_program") {
        return;
    }
    let root = support::cgroup_root();
    let mut agent = Agent::start(&["run", "--audit", "-"]);
    let ids = agent.program_ids();
    assert_eq!(
        ids.len(),
        24,
        "four sock_addr programs, twelve tracepoints (process and cgroup lifecycle, socket \
         creation, connect results: sys_exit_connect, io_uring submission and completion; TCP \
         resets), the raw-socket sock_create and egress programs, the DNS egress and ingress \
         programs, and the flow sock_ops, cgroup_skb egress/ingress and sock_release programs"
    );
    let attached = support::attached_program_ids(&root);
    let on_cgroup = ids.iter().filter(|id| attached.contains(id)).count();
    assert_eq!(
        on_cgroup,
        12,
        "sock_addr, sock_create, sock_release, sock_ops and cgroup_skb (raw, DNS, flows) \
         programs attached to {}",
        root.display()
    );

    let status = agent.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let attached = support::attached_program_ids(&root);
    for id in &ids {
        assert!(!attached.contains(id), "program {id} still attached");
        assert!(!support::program_loaded(*id), "program {id} still loaded");
    }
    assert!(
        agent.stderr().iter().any(|l| l.contains("kernel counters")),
        "counters summary logged at exit"
    );
}

#[test]
fn health_and_readiness_endpoints() {
    if !support::privileged("health_and_readiness_endpoints") {
        return;
    }
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = Agent::start(&["run", "--audit", "-", "--listen", &listen]);
    assert_eq!(http_status(&listen, "/healthz"), 200);
    assert_eq!(http_status(&listen, "/readyz"), 200);
    assert_eq!(http_status(&listen, "/nope"), 404);
    drop(agent);
}

#[test]
fn bad_flags_give_one_line_and_exit_2() {
    // No privileges needed: parsing fails before anything is loaded.
    for args in [
        &["run", "--ignore-cidr", "300.1.1.1/8"][..],
        &["run", "--ringbuf-bytes", "12345"],
        &["run", "--frobnicate"],
        &["launch"],
    ] {
        let mut agent = Agent::spawn(args);
        let status = agent.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}");
        let stderr = agent.stderr();
        assert_eq!(stderr.len(), 1, "{args:?}: {stderr:?}");
        assert!(stderr[0].starts_with("egret: error: "), "{stderr:?}");
    }
}

#[test]
fn unusable_environment_gives_one_clear_line() {
    if !support::privileged("unusable_environment_gives_one_clear_line") {
        return;
    }
    // A directory that is not cgroup v2.
    let mut agent = Agent::spawn(&["run", "--cgroup", "/tmp"]);
    let status = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let stderr = agent.stderr();
    let errors: Vec<&String> = stderr
        .iter()
        .filter(|l| l.starts_with("egret: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr:?}");
    assert!(
        errors[0].contains("/tmp is not a cgroup v2 directory"),
        "{stderr:?}"
    );

    // No privileges: the kernel refuses to load programs.
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(crate::support::agent_path())
        .arg("run")
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("egret: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("CAP_BPF"),
        "hint names the capability: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn http_status(addr: &str, path: &str) -> u16 {
    support::http::status(addr.parse().expect("listen address"), path)
}

/// Issue 13 item 6: a cgroup created, used by one short process and removed
/// at once is still named, because its path came with the kernel's
/// `cgroup_mkdir` record, before the process ran. The leaf is named like a
/// CRI-O container scope so the resolved path shows as `container.id`
/// (unresolved, the field would be null).
#[test]
fn short_lived_cgroup_keeps_its_path() {
    if !support::privileged("short_lived_cgroup_keeps_its_path") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = NetNs::new("shortcg");
    let probe = support::probe_path();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let id = format!("{:032x}{nanos:032x}", u128::from(std::process::id()));
    let parent = TestCgroup::new("shortcg");
    for _ in 0..3 {
        let leaf = parent.child(&format!("crio-{id}.scope"));
        let procs = leaf.path().join("cgroup.procs");
        // The shell moves itself in, then becomes the probe (both execs are
        // in place: the pid is the probe's).
        let script = format!(
            "echo $$ > '{}' && exec ip netns exec {} '{}' tcp {V4_SERVER}:8131",
            procs.display(),
            ns.name,
            probe.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        assert!(child.wait().expect("wait for probe").success());
        leaf.remove().expect("remove the leaf cgroup at once");

        let event = agent.wait_event_for_pid(pid);
        assert_eq!(event["fd.sport"], 8131, "{event}");
        assert_eq!(
            event["container.id"],
            id[..12],
            "a removed cgroup keeps its path: {event}\n{}",
            agent.stderr().join("\n")
        );
    }
}

/// Issue 13 items 4–5: `proc.exepath` is the file the kernel runs, however
/// the exec named it: a symlink, `fexecve` of a memfd (fileless), a file
/// deleted before it ran, and a process renamed by prctl keep their true
/// executable, with the matching `proc.is_exe_*` flags.
#[test]
fn exepath_is_the_kernels_executable_file() {
    if !support::privileged("exepath_is_the_kernels_executable_file") {
        return;
    }
    let agent = Agent::start(&["run", "--audit", "-"]);
    let ns = NetNs::new("exe");
    let probe = support::probe_path();
    let real = std::fs::canonicalize(&probe).expect("probe path");
    let real = real.to_str().expect("UTF-8 path");
    let flags = |event: &Value| {
        [
            "proc.is_exe_from_memfd",
            "proc.is_exe_deleted",
            "proc.is_exe_upper_layer",
        ]
        .map(|f| event[f].as_bool().unwrap_or_else(|| panic!("{f}: {event}")))
    };

    let dir = support::TempDir::new("exe-link");
    // Files written under the temp dir are in an overlay's upper layer when
    // the root is an overlay (the 6.1 guest's is: virtme-ng over the host).
    let written_upper = on_overlayfs(dir.path());
    let link = dir.path().join("innocent");
    std::os::unix::fs::symlink(&probe, &link).expect("symlink");
    let (pid, _) = ns.run(&link, &["tcp", &format!("{V4_SERVER}:8132")]);
    let event = agent.wait_event_for_pid(pid);
    assert_eq!(event["proc.exepath"], real, "through a symlink: {event}");
    assert_eq!(flags(&event), [false, false, false], "{event}");

    let (pid, _) = ns.run(&probe, &["memfd-exec", &format!("{V4_SERVER}:8133")]);
    let event = agent.wait_event_for_pid(pid);
    assert_eq!(event["proc.exepath"], "/memfd:payload (deleted)", "{event}");
    assert_eq!(flags(&event), [true, false, false], "{event}");
    assert_eq!(
        event["proc.cmdline"],
        format!("sshd tcp {V4_SERVER}:8133"),
        "argv[0] is a lie, the exe path is not: {event}"
    );

    let (pid, _) = ns.run(&probe, &["deleted-exec", &format!("{V4_SERVER}:8134")]);
    let event = agent.wait_event_for_pid(pid);
    let gone = std::env::temp_dir().join(format!("egret-probe-deleted-{pid}"));
    assert_eq!(
        event["proc.exepath"],
        format!("{} (deleted)", gone.display()),
        "{event}"
    );
    assert_eq!(flags(&event), [false, true, written_upper], "{event}");

    // Deleted after it started: seen through /proc while it runs.
    let copy = dir.path().join("implant");
    std::fs::copy(&probe, &copy).expect("copy the probe");
    let (pid, _) = ns.run(&copy, &["rm-self-tcp", &format!("{V4_SERVER}:8136")]);
    let event = agent.wait_event_for_pid(pid);
    let copy = std::fs::canonicalize(dir.path())
        .expect("dir")
        .join("implant");
    assert_eq!(
        event["proc.exepath"],
        format!("{} (deleted)", copy.display()),
        "{event}"
    );
    assert_eq!(flags(&event), [false, true, written_upper], "{event}");

    let (pid, _) = ns.run(
        &probe,
        &["prctl-rename", "kworker/0:1", &format!("{V4_SERVER}:8135")],
    );
    let event = agent.wait_event_for_pid(pid);
    assert_eq!(event["proc.name"], "kworker/0:1", "{event}");
    assert_eq!(
        event["proc.exepath"], real,
        "a new name hides nothing: {event}"
    );
}

/// Whether `dir` is on overlayfs (statfs magic `OVERLAYFS_SUPER_MAGIC`).
fn on_overlayfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: statfs fills the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let ok = unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0;
    ok && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC
}
