//! Issue 5 end to end: a real Prometheus server scrapes the real agent while
//! a rule fires for real connections, loads the shipped alert rules, and
//! answers every PromQL expression of deploy/ (dashboard panels, dashboard
//! variables, alert rules).
//!
//! `promtool check rules` on the same rule file runs in
//! agent/tests/metrics.rs (`rule_files_pass_promtool`); here the server
//! itself loads and evaluates the rules, which is the stronger check.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use egret::metrics::promql::{self, Expression};
use egret_testkit::dns::DnsServer;

use crate::support::{
    self, TempDir,
    agent::{Agent, EVENT_TIMEOUT},
    netns::{NetNs, V4_SERVER},
    prometheus::{JOB, PROMETHEUS, PROMETHEUS_TIMEOUT, Prometheus, Vector, free_port, repo_root},
};

const RULE: &str = "Egret E2E Prometheus Egress";
/// A port no other end-to-end test uses, so the rule only fires for this
/// test's probes even though every agent sees every test's traffic.
const PORT: u16 = 8095;
/// Probes per round; two rounds, so every counter changes between scrapes.
const PROBES: usize = 3;

/// Alert conditions the traffic of this test must trip. Every other alert
/// expression must evaluate to nothing: a healthy agent that lost nothing
/// must not page anyone.
const FIRING: &[&str] = &["EgretEgressAlert"];

/// Dashboard queries the test's traffic must move, as (panel, metric read):
/// at least one series above zero once the second round of alerts has been
/// scraped. Every other dashboard query must still return at least one
/// series (the agent exports its counters at zero from the start).
const MOVING: &[(&str, &str)] = &[
    ("panel Rule trigger frequency", "egret_alerts_total"),
    ("panel Alerts by priority", "egret_alerts_total"),
    ("panel Top rules in range", "egret_alerts_total"),
    (
        "panel Alerts by namespace / pod / container",
        "egret_alerts_total",
    ),
    ("panel Alerts by tags", "egret_alerts_total"),
    (
        "panel Alerts by destination IP:port",
        "egret_destination_alerts_total",
    ),
    ("panel Alerts by process", "egret_destination_alerts_total"),
    (
        "panel Alerts by container",
        "egret_destination_alerts_total",
    ),
    (
        "panel Which IP, which process, which container",
        "egret_destination_alerts_total",
    ),
    (
        "panel Destination series held / cap",
        "egret_metrics_series",
    ),
    (
        "panel Cluster-wide egress attempts by verdict",
        "egret_egress_events_total",
    ),
    (
        "panel Egress attempts seen by node",
        "egret_kernel_seen_total",
    ),
    (
        "panel Events emitted by kernel hook",
        "egret_kernel_emitted_total",
    ),
    ("panel Agents up", "up"),
    (
        "panel Webhook deliveries and retries",
        "egret_webhook_deliveries_total",
    ),
    ("panel Agent memory (RSS)", "process_resident_memory_bytes"),
    ("panel Rules loaded / last reload OK", "egret_rules_loaded"),
    (
        "panel Rules loaded / last reload OK",
        "egret_rules_last_reload_successful",
    ),
    ("panel Agent builds", "egret_build_info"),
    ("variable namespace", "egret_alerts_total"),
];

/// Dashboard queries allowed to return nothing, as (panel, why).
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "panel Enrichment failures",
        "nothing in the agent calls Metrics::enrichment_failed yet, so \
         egret_enrichment_failures_total is never exported",
    ),
    (
        "panel DNS tunnelling and DNS IOC alerts",
        "this agent loads only the test's rule, so no rules/dns.yaml rule \
         fires (tests/e2e/dns.rs raises them)",
    ),
];

#[test]
fn prometheus_scrapes_the_agent_and_answers_every_deploy_expression() {
    if !support::privileged("prometheus_scrapes_the_agent_and_answers_every_deploy_expression") {
        return;
    }
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} missing: scripts/setup.sh installs the Debian package prometheus"
    );
    let expressions = promql::deploy_expressions(&repo_root()).expect("deploy expressions");
    for (origin, metric) in MOVING {
        assert!(
            expressions
                .iter()
                .any(|e| e.origin == *origin && reads(e, metric)),
            "no query of {metric} in {origin} of {}: update this test",
            promql::DASHBOARD
        );
    }
    for (origin, _) in MAY_BE_EMPTY {
        assert!(
            expressions.iter().any(|e| e.origin == *origin),
            "{origin} is not in {} any more: update this test",
            promql::DASHBOARD
        );
    }

    let dir = TempDir::new("prometheus");
    let rules = dir.write(
        "rules.yaml",
        &format!(
            "- rule: {RULE}
  desc: A host process connects to the TEST-NET address of the Prometheus test
  condition: evt.type = connect and fd.sip = {V4_SERVER} and fd.sport = {PORT}
  output: Test egress (pid=%proc.pid proc=%proc.name connection=%fd.name)
  priority: WARNING
  tags: [network]
"
        ),
    );
    let receiver = support::http::Receiver::start().expect("webhook receiver");
    // The node-health alerts must stay silent on a healthy agent; attached
    // to the root, this agent would also see other tests' containers,
    // whose private containerd it cannot reach (container_unavailable).
    // The agent only sees its own test cgroup (declared first: dropped last).
    let cgroup = support::cgroup::TestCgroup::new("prom");
    let agent_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    // Prometheus starts first so its start-up overlaps the agent's; until
    // the agent listens its scrapes fail, which the target wait covers.
    let prometheus = Prometheus::start(&dir, agent_addr);
    let agent = Agent::start(&[
        "run",
        "--listen",
        &agent_addr.to_string(),
        "--rules",
        &rules.display().to_string(),
        "--webhook",
        &format!("http://{}/", receiver.addr),
        "--cgroup",
        &cgroup.path().display().to_string(),
    ]);
    prometheus.wait_ready();
    // A successful scrape before any alert: the webhook counters are then
    // seen at zero, so the deliveries below show up as a rate.
    prometheus.wait_target_up(agent_addr);

    let ns = NetNs::new("prom");
    // One DNS query per round feeds the observed-DNS panels.
    let _dns = DnsServer::start(&ns, &[("prom.example", "203.0.113.30")]);
    let probe = support::probe_path();
    let target = format!("{V4_SERVER}:{PORT}");
    let round = || {
        let (_, status) = ns.run_in_cgroup(
            cgroup.path(),
            &probe,
            &["dns-query", &format!("{V4_SERVER}:53"), "1", "prom.example"],
        );
        assert!(status.success(), "dns-query: {status:?}");
        for _ in 0..PROBES {
            let (pid, _) = ns.run_in_cgroup(cgroup.path(), &probe, &["tcp", &target]);
            let alert = agent
                .wait_json(
                    |v| v["rule"] == RULE && v["output_fields"]["proc.pid"] == pid,
                    EVENT_TIMEOUT,
                )
                .unwrap_or_else(|| {
                    panic!(
                        "no alert for pid {pid}; stderr:\n{}",
                        agent.stderr().join("\n")
                    )
                });
            assert_eq!(alert["priority"], "Warning", "{alert}");
            assert_eq!(
                alert["output_fields"]["proc.name"], "egret-probe",
                "{alert}"
            );
            assert_eq!(alert["output_fields"]["fd.name"], target, "{alert}");
        }
    };
    round();
    // The alert series must be in the TSDB before the second round, so
    // rate() and increase() see the counter move between two samples.
    let series = format!("egret_alerts_total{{job=\"{JOB}\", rule=\"{RULE}\"}}");
    prometheus.wait_query(&series, |v| v >= PROBES as f64);
    round();
    prometheus.wait_query(&series, |v| v >= 2.0 * PROBES as f64);

    // Ingesting the OpenMetrics text is the parse check; up == 1 says the
    // last scrape was accepted.
    let up = prometheus.query(&format!("up{{job=\"{JOB}\"}}"));
    assert_eq!(up.values(), vec![1.0], "up: {up:?}");

    // Counters reach Prometheus a scrape apart (webhook deliveries lag the
    // alerts), so poll until every expectation holds or time runs out.
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let rows = loop {
        let rows: Vec<Row> = expressions
            .iter()
            .map(|e| Row::evaluate(&prometheus, e))
            .collect();
        if rows.iter().all(|r| r.problem().is_none()) || Instant::now() >= deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    print_table(&rows);
    // Node-wide counters also see other tests' processes and cgroups;
    // the breakdown says which part of the node a failed check came from.
    for breakdown in [
        "sum by (reason) (egret_enrichment_failures_total)",
        "sum by (hook) (egret_kernel_emitted_total)",
    ] {
        println!("{breakdown}: {:?}", prometheus.try_query(breakdown));
    }
    let problems: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.problem()
                .map(|p| format!("{} {}: {p}\n    {}", r.file, r.origin, r.query))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{} of {} expressions failed:\n{}",
        problems.len(),
        rows.len(),
        problems.join("\n")
    );

    assert!(receiver.count() > 0, "the webhook receiver got no request");
    prometheus.wait_rules_evaluated();
    prometheus.wait_alert_firing("EgretEgressAlert", RULE);
}

/// Issue 10: a workload's first violation pages. The agent creates the
/// alert series at 1 on its first alert, so `increase()` alone sees
/// nothing; the shipped rules count a new series' whole value.
#[test]
fn one_connect_of_a_new_workload_fires_a_shipped_alert() {
    if !support::privileged("one_connect_of_a_new_workload_fires_a_shipped_alert") {
        return;
    }
    const FIRST_RULE: &str = "Egret E2E First Violation";
    const FIRST_PORT: u16 = 8096;
    let dir = TempDir::new("prometheus-first");
    let rules = dir.write(
        "rules.yaml",
        &format!(
            "- rule: {FIRST_RULE}
  desc: A host process connects once to the TEST-NET address of this test
  condition: evt.type = connect and fd.sip = {V4_SERVER} and fd.sport = {FIRST_PORT}
  output: First egress (pid=%proc.pid proc=%proc.name connection=%fd.name)
  priority: WARNING
  tags: [network]
"
        ),
    );
    let agent_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let prometheus = Prometheus::start(&dir, agent_addr);
    let agent = Agent::start(&[
        "run",
        "--listen",
        &agent_addr.to_string(),
        "--rules",
        &rules.display().to_string(),
    ]);
    prometheus.wait_ready();
    prometheus.wait_target_up(agent_addr);
    // The series must not exist before the connect: that is the case the
    // old `increase() > 0` rules missed.
    let series = format!("egret_alerts_total{{job=\"{JOB}\", rule=\"{FIRST_RULE}\"}}");
    assert!(
        prometheus.query(&series).0.is_empty(),
        "{series} before any connect"
    );

    let ns = NetNs::new("promfirst");
    let target = format!("{V4_SERVER}:{FIRST_PORT}");
    let (pid, _) = ns.run(&support::probe_path(), &["tcp", &target]);
    agent
        .wait_json(
            |v| v["rule"] == FIRST_RULE && v["output_fields"]["proc.pid"] == pid,
            EVENT_TIMEOUT,
        )
        .unwrap_or_else(|| {
            panic!(
                "no alert for pid {pid}; stderr:\n{}",
                agent.stderr().join("\n")
            )
        });
    prometheus.wait_query(&series, |v| v == 1.0);
    prometheus.wait_alert_firing("EgretEgressAlert", FIRST_RULE);
    let alerts = prometheus.api("/api/v1/alerts").expect("alerts API");
    let alert = alerts["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["rule"] == FIRST_RULE)
        .cloned()
        .unwrap_or_default();
    println!("firing: {alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    assert_eq!(alert["labels"]["priority"], "Warning", "{alert}");
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("1 alert(s) in 5m")),
        "{alert}"
    );
}

/// One expression's result against the live server.
fn reads(e: &Expression, metric: &str) -> bool {
    promql::metric_names(&e.expr).iter().any(|m| m == metric)
}

/// What an expression must return after the test's traffic.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// An alert condition that must hold (see [`FIRING`]).
    Fires,
    /// An alert condition that must not hold on a healthy agent.
    Quiet,
    /// A dashboard query: at least one series.
    Data,
    /// A dashboard query: a series above zero (see [`MOVING`]).
    AboveZero,
    /// A dashboard query excused in [`MAY_BE_EMPTY`]: it must still run.
    MayBeEmpty,
}

impl Expect {
    fn of(e: &Expression) -> Expect {
        let origin = e.origin.as_str();
        if e.file != promql::DASHBOARD {
            if FIRING.contains(&origin) {
                Expect::Fires
            } else {
                Expect::Quiet
            }
        } else if MOVING.iter().any(|(o, m)| *o == origin && reads(e, m)) {
            Expect::AboveZero
        } else if MAY_BE_EMPTY.iter().any(|(o, _)| *o == origin) {
            Expect::MayBeEmpty
        } else {
            Expect::Data
        }
    }

    fn name(self) -> &'static str {
        match self {
            Expect::Fires => "fires",
            Expect::Quiet => "quiet",
            Expect::Data => "data",
            Expect::AboveZero => ">0",
            Expect::MayBeEmpty => "may-empty",
        }
    }
}

/// One expression's result against the live server.
struct Row {
    file: &'static str,
    origin: String,
    expect: Expect,
    query: String,
    /// Series returned, or Prometheus's error.
    result: Result<Vector, String>,
}

impl Row {
    fn evaluate(prometheus: &Prometheus, e: &Expression) -> Row {
        let query = promql::instantiate(&e.expr);
        Row {
            file: e.file,
            origin: e.origin.clone(),
            expect: Expect::of(e),
            result: prometheus.try_query(&query),
            query,
        }
    }

    /// What is wrong with the result, if anything.
    fn problem(&self) -> Option<String> {
        let v = match &self.result {
            Ok(v) => v,
            Err(e) => return Some(format!("query failed: {e}")),
        };
        let empty = v.0.is_empty();
        match self.expect {
            Expect::Fires if empty => {
                Some("alert condition should hold but returned nothing".into())
            }
            Expect::Quiet if !empty => Some(format!(
                "alert condition holds on a healthy agent: {:?}",
                v.0
            )),
            Expect::Data | Expect::AboveZero if empty => Some("returned no series".into()),
            Expect::AboveZero if !v.values().iter().any(|x| *x > 0.0) => {
                Some(format!("no series above zero: {:?}", v.0))
            }
            _ => None,
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<6} {:<9} {:>6} {:>10}  origin / query",
        "result", "expect", "series", "max"
    );
    for r in rows {
        let (series, max) = match &r.result {
            Ok(v) => {
                let max = v.values().into_iter().fold(f64::NAN, f64::max);
                (v.0.len().to_string(), format!("{max:.4}"))
            }
            Err(_) => ("-".into(), "-".into()),
        };
        let status = if r.problem().is_some() { "FAIL" } else { "ok" };
        println!(
            "{status:<6} {:<9} {series:>6} {max:>10}  {} {}\n{:>36}{}",
            r.expect.name(),
            r.file.rsplit('/').next().unwrap_or(r.file),
            r.origin,
            "",
            r.query
        );
    }
    let count = |x: Expect| rows.iter().filter(|r| r.expect == x).count();
    println!(
        "{} expressions: {} fire, {} quiet, {} above zero, {} with data, {} may be empty",
        rows.len(),
        count(Expect::Fires),
        count(Expect::Quiet),
        count(Expect::AboveZero),
        count(Expect::Data),
        count(Expect::MayBeEmpty)
    );
    for (origin, why) in MAY_BE_EMPTY {
        println!("may be empty: {origin}: {why}");
    }
}
