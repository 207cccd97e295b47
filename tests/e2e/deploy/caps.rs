//! Least privilege: the agent works with exactly the DaemonSet's
//! capabilities, and each of them is needed.
use super::*;

#[test]
fn agent_runs_with_exactly_the_daemonset_capabilities() {
    const TEST: &str = "agent_runs_with_exactly_the_daemonset_capabilities";
    if !support::privileged(TEST) || !have_setpriv(TEST) {
        return;
    }
    let caps = daemonset_capabilities();
    let ns = NetNs::new("caps");
    let mut early = EarlyProcess::start(&ns, 8081);
    let early_exe = early.exe();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = agent_with_caps(&caps, &["run", "--audit", "-", "--listen", &listen]);
    wait_ready(&mut agent, port);

    // The running agent holds those capabilities and no others.
    let mask = format!("{:016x}", cap_mask(&caps));
    let pid = agent.child.id();
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            proc_status_field(pid, set).as_deref(),
            Some(mask.as_str()),
            "{set}"
        );
    }

    // A process born after the start: fields from the kernel's records.
    let (probe_pid, _) = ns.run(
        &support::probe_path(),
        &["tcp", &format!("{V4_SERVER}:8080")],
    );
    let event = agent
        .wait_json(EVENT_TIMEOUT, |v| v["proc.pid"] == probe_pid)
        .unwrap_or_else(|| panic!("no event; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(event["fd.sip"], V4_SERVER, "{event}");
    assert_eq!(event["proc.name"], "egret-probe", "{event}");
    assert_eq!(
        event["proc.exepath"],
        support::probe_path().display().to_string(),
        "{event}"
    );
    assert!(
        event["proc.cmdline"]
            .as_str()
            .is_some_and(|c| c.starts_with("egret-probe tcp")),
        "{event}"
    );
    assert_eq!(event["user.name"], "root", "{event}");
    assert_eq!(event["container.id"], "host", "{event}");

    // A process that predates the agent: its executable comes from
    // /proc/<pid>/exe, readable thanks to CAP_SYS_PTRACE.
    let early_pid = early.pid();
    early.go();
    let event = agent
        .wait_json(EVENT_TIMEOUT, |v| v["proc.pid"] == early_pid)
        .unwrap_or_else(|| panic!("no event; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(event["proc.name"], "bash", "{event}");
    assert_eq!(
        event["proc.exepath"],
        early_exe.display().to_string(),
        "{event}"
    );
    agent.terminate();
    assert!(
        agent.status.is_some_and(|s| s.success()),
        "clean exit: {:?}\n{}",
        agent.status,
        agent.stderr().join("\n")
    );
}

/// What the agent says when a capability is missing: the cause (the
/// kernel's answer) and a hint naming the capabilities, on one line.
fn expected_failure(cap: &str) -> Option<&'static [&'static str]> {
    match cap {
        // bpf(BPF_MAP_CREATE) is refused.
        "BPF" => Some(&["failed to create map", "Operation not permitted", "CAP_"]),
        // The verifier treats the programs as unprivileged and rejects
        // their pointer arithmetic.
        "PERFMON" => Some(&["BPF_PROG_LOAD", "Permission denied", "CAP_"]),
        // cgroup sock_addr programs are networking programs.
        "NET_ADMIN" => Some(&["BPF_PROG_LOAD", "Operation not permitted", "CAP_"]),
        _ => None,
    }
}

#[test]
fn each_daemonset_capability_is_needed() {
    const TEST: &str = "each_daemonset_capability_is_needed";
    if !support::privileged(TEST) || !have_setpriv(TEST) {
        return;
    }
    let caps = daemonset_capabilities();
    let mut problems = Vec::new();
    for cap in &caps {
        let fewer = without(&caps, cap);
        if cap == "SYS_PTRACE" {
            sys_ptrace_is_needed_for_proc_fields(&fewer);
            continue;
        }
        let Some(expected) = expected_failure(cap) else {
            problems.push(format!(
                "CAP_{cap} is in the DaemonSet, but this test does not know why it is needed"
            ));
            continue;
        };
        if let Err(problem) = fails_clearly_without(cap, &fewer, expected) {
            problems.push(problem);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Runs the agent with `caps` (one short of the DaemonSet's) and checks
/// that it exits non-zero, never ready, with one `egret: error:` line that
/// is its last and names the cause.
fn fails_clearly_without(cap: &str, caps: &[String], expected: &[&str]) -> Result<(), String> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = agent_with_caps(caps, &["run", "--audit", "-", "--listen", &listen]);
    let status = agent.wait_exit(READY_TIMEOUT);
    let stderr = agent.stderr();
    let all = stderr.join("\n");
    if status.is_none_or(|s| s.success()) {
        return Err(format!(
            "without CAP_{cap} the agent must fail ({status:?}):\n{all}"
        ));
    }
    if stderr.iter().any(|l| l.contains("egret ready")) {
        return Err(format!("without CAP_{cap} the agent became ready:\n{all}"));
    }
    let errors: Vec<&String> = stderr
        .iter()
        .filter(|l| l.starts_with("egret: error:"))
        .collect();
    if errors.len() != 1 || stderr.last() != Some(errors[0]) {
        return Err(format!(
            "without CAP_{cap}: the error must be one line, the last one; stderr:\n{}",
            all.chars().take(2000).collect::<String>()
        ));
    }
    for needle in expected {
        if !errors[0].contains(needle) {
            return Err(format!(
                "without CAP_{cap}: `{needle}` not in {}",
                errors[0]
            ));
        }
    }
    eprintln!(
        "without CAP_{cap}: {}",
        errors[0].chars().take(300).collect::<String>()
    );
    Ok(())
}

/// Without CAP_SYS_PTRACE the agent runs, but /proc/<pid>/exe of processes
/// with more privileges than the agent is unreadable: the executable path of
/// a process it only knows from /proc is empty.
fn sys_ptrace_is_needed_for_proc_fields(caps: &[String]) {
    let ns = NetNs::new("noptrace");
    let mut early = EarlyProcess::start(&ns, 8082);
    early.exe();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut agent = agent_with_caps(caps, &["run", "--audit", "-", "--listen", &listen]);
    wait_ready(&mut agent, port);
    let early_pid = early.pid();
    early.go();
    let event = agent
        .wait_json(EVENT_TIMEOUT, |v| v["proc.pid"] == early_pid)
        .unwrap_or_else(|| panic!("no event; stderr:\n{}", agent.stderr().join("\n")));
    assert_eq!(event["proc.name"], "bash", "{event}");
    assert_eq!(
        event["proc.exepath"], "",
        "without CAP_SYS_PTRACE /proc/<pid>/exe is unreadable: {event}"
    );
    eprintln!("without CAP_SYS_PTRACE: proc.exepath is empty for processes found in /proc");
}
