//! Condition semantics, through the public API.
mod common;

use common::*;
use egret_rules::{FieldId, Options, Priority, RuleMatching, TestEvent};

fn container_connect(dest: &str, port: u16) -> TestEvent {
    TestEvent::connect(ip(dest), port).in_pod("shop", "web-1", "nginx:1.27")
}

const SEED: &str = "
- rule: Outbound Connection in Container
  desc: Detects outbound network connection from container to external IP
  condition: >
    evt.type = connect and
    container and
    not fd.sip in (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)
  output: >
    Container outbound connection to external IP: (command=%proc.cmdline connection=%fd.name user=%user.name)
  priority: WARNING
  tags: [network, outbound]
";

#[test]
fn seed_rule_loads_alone_and_works_verbatim() {
    let loaded = load_text(SEED, &Options::default());
    assert!(loaded.diagnostics.is_empty(), "{:?}", diagnostics(&loaded));
    let rules = loaded.ruleset;
    let event = container_connect("203.0.113.7", 443);
    let mut ids = Vec::new();
    rules.evaluate(&event, &mut ids);
    assert_eq!(ids.len(), 1);
    let rule = rules.rule(ids[0]).unwrap();
    assert_eq!(&**rule.name(), "Outbound Connection in Container");
    assert_eq!(rule.priority(), Priority::Warning);
    assert_eq!(rule.priority().as_str(), "Warning");
    let tags: Vec<&str> = rule.tags().iter().map(|t| &**t).collect();
    assert_eq!(tags, ["network", "outbound"]);
    let rendered = rule.render(&event);
    assert_eq!(
        rendered.output,
        "Container outbound connection to external IP: (command=curl https://example.com connection=203.0.113.7:443 user=root)"
    );
    let keys: Vec<&str> = rendered.fields.iter().map(|(k, _)| &**k).collect();
    assert_eq!(keys, ["proc.cmdline", "fd.name", "user.name"]);

    for quiet in [
        container_connect("10.1.2.3", 443),
        container_connect("172.31.0.1", 443),
        container_connect("192.168.1.1", 443),
        container_connect("::ffff:10.1.2.3", 443),
        TestEvent::connect(ip("203.0.113.7"), 443),
        TestEvent::udp_send(ip("203.0.113.7"), 53).in_pod("shop", "web-1", "nginx"),
    ] {
        assert!(!fires(&rules, &quiet), "{quiet:?}");
    }
    assert!(fires(&rules, &container_connect("2001:db8::1", 443)));
    // Missing destination: `not fd.sip in (...)` is true, as in Falco.
    assert!(fires(
        &rules,
        &container_connect("203.0.113.7", 443).without(FieldId::ServerIp)
    ));
}

#[test]
fn missing_values_make_comparisons_false() {
    let ev = TestEvent::connect(ip("198.51.100.1"), 80).without(FieldId::ProcName);
    assert!(!fires(&one_rule("proc.name = curl"), &ev));
    assert!(!fires(&one_rule("proc.name != curl"), &ev));
    assert!(fires(&one_rule("not proc.name = curl"), &ev));
    assert!(!fires(&one_rule("proc.name exists"), &ev));
    assert!(fires(&one_rule("proc.exe exists"), &ev));
    assert!(!fires(
        &one_rule("fd.cip exists or fd.cport > 0 or fd.cnet in (0.0.0.0/0)"),
        &ev
    ));
}

#[test]
fn addresses_networks_and_cidr_literals() {
    let v4 = TestEvent::connect(ip("10.20.30.40"), 443);
    let mapped = TestEvent::connect(ip("::ffff:10.20.30.40"), 443).with(FieldId::V4Mapped, true);
    let v6 = TestEvent::connect(ip("2001:db8::42"), 443);
    for cond in [
        "fd.sip in (10.0.0.0/8)",
        "fd.sip = 10.20.30.40",
        "fd.sip = 10.20.0.0/16",
        "fd.rip in (192.168.0.1, 10.20.30.0/24)",
        "fd.snet in (10.0.0.0/8)",
        "fd.net = \"10.0.0.0/8\"",
        "fd.rnet in ('10.20.30.40')",
        "fd.sip in (::ffff:10.0.0.0/104)",
        "fd.typechar = 4 and fd.type = ipv4",
    ] {
        let rules = one_rule(cond);
        assert!(fires(&rules, &v4), "{cond} on v4");
        assert!(fires(&rules, &mapped), "{cond} on mapped");
        assert!(!fires(&rules, &v6), "{cond} on v6");
    }
    for cond in [
        "fd.sip in (2001:db8::/32)",
        "fd.sip = \"2001:db8::42\"",
        "fd.snet in (\"2001:db8::/64\", 203.0.113.0/24)",
        "fd.typechar = 6 and fd.type = ipv6",
    ] {
        assert!(fires(&one_rule(cond), &v6), "{cond}");
        assert!(!fires(&one_rule(cond), &v4), "{cond}");
    }
    assert!(!fires(&one_rule("fd.sip != 10.0.0.0/8"), &v4));
    assert!(fires(&one_rule("fd.sip != 10.20.30.41"), &v4));
    assert!(fires(&one_rule("fd.sip != 10.20.30.41"), &v6));
    assert!(fires(&one_rule("not fd.net = 127.0.0.0/8"), &v4));
}

#[test]
fn udp_sends_match_sendto_and_sendmsg() {
    let send = TestEvent::udp_send(ip("8.8.8.8"), 53);
    for cond in [
        "evt.type = sendmsg",
        "evt.type = sendto",
        "evt.type in (sendto, sendmsg)",
        "evt.type in (sendmsg)",
        "evt.type intersects (sendmmsg)",
    ] {
        assert!(fires(&one_rule(cond), &send), "{cond}");
        assert!(
            !fires(&one_rule(cond), &TestEvent::connect(ip("8.8.8.8"), 53)),
            "{cond}"
        );
    }
    assert!(!fires(&one_rule("evt.type != sendmsg"), &send));
    assert!(fires(&one_rule("evt.type != connect"), &send));
    // Only comparisons with evt.type are rewritten.
    assert!(!fires(
        &one_rule("proc.name = sendmsg"),
        &send.clone().with(FieldId::ProcName, "sendto")
    ));
}

#[test]
fn string_operators() {
    let ev = TestEvent::connect(ip("198.51.100.1"), 80)
        .with(FieldId::ProcCmdline, "python3 -c 'import socket'")
        .with(FieldId::ProcExepath, "/usr/local/bin/python3");
    let yes = [
        "proc.cmdline contains socket",
        "proc.cmdline contains \"import socket\"",
        "proc.cmdline icontains IMPORT",
        "proc.cmdline startswith python3",
        "proc.cmdline endswith \"socket'\"",
        "proc.exepath glob '/usr/*/python?'",
        "proc.exepath iglob '/USR/*'",
        "proc.exepath regex '/usr/(local/)?bin/python[0-9]'",
        "proc.exepath pmatch (/usr/local, /opt)",
        "proc.exepath in (/bin/sh, /usr/local/bin/python3)",
        "proc.exepath intersects (/usr/local/bin/python3)",
        "proc.name > 5 and proc.name >= 0x10",
        "proc.cmdline bcontains 736f636b6574",
        "proc.cmdline bstartswith 707974",
    ];
    for cond in yes {
        assert!(fires(&one_rule(cond), &ev), "{cond}");
    }
    let no = [
        "proc.cmdline contains SOCKET",
        "proc.exepath regex 'bin/python3'",
        "proc.exepath pmatch (/usr/loc)",
        "proc.exepath glob '/usr/*/python'",
        "proc.exepath in ()",
    ];
    for cond in no {
        assert!(!fires(&one_rule(cond), &ev), "{cond}");
    }
    let many: Vec<String> = (0..200).map(|i| format!("proc{i}")).collect();
    let rules = one_rule(&format!("proc.name in ({}, curl)", many.join(", ")));
    assert!(fires(&rules, &ev));
}

#[test]
fn numbers_booleans_and_labels() {
    let ev = TestEvent::connect(ip("198.51.100.1"), 8443)
        .in_pod("shop", "web-1", "nginx:1.27")
        .with_label("app", "web")
        .with_label("tier", "front");
    for cond in [
        "fd.sport = 8443 and fd.rport > 8000 and fd.sport <= 0x20FB and fd.sport in (80, 8443)",
        "proc.pid >= 1 and user.uid = 0 and egret.netns_cookie != 4096",
        "container.host_network = false and container.host_network != true and egret.v4_mapped in (false)",
        "container.host_network in (true, false)",
        "k8s.pod.label[app] = web and k8s.pod.label.tier = front and k8s.pod.label['app'] in (web)",
        "k8s.pod.labels intersects (app:web, x:y) and k8s.pod.labels in (app, tier:front) and k8s.pod.labels exists",
        "container.image.repository = nginx and container.image.tag = '1.27' and k8s.ns.name = shop",
    ] {
        assert!(fires(&one_rule(cond), &ev), "{cond}");
    }
    for cond in [
        "k8s.pod.label.missing exists",
        "k8s.pod.labels in (app:web)",
        "k8s.pod.labels intersects (app:api)",
        "container.host_network in ()",
    ] {
        assert!(!fires(&one_rule(cond), &ev), "{cond}");
    }
}

#[test]
fn wrong_value_types_from_the_agent_are_unknown() {
    let ev = TestEvent::connect(ip("198.51.100.1"), 80).with(FieldId::ServerPort, "eighty");
    assert!(!fires(&one_rule("fd.sport = 80"), &ev));
    assert!(!fires(&one_rule("fd.sport != 80"), &ev));
    assert!(!fires(&one_rule("fd.sport exists and fd.sport < 100"), &ev));
}

#[test]
fn rule_matching_priority_and_enabled() {
    let yaml = [
        rule_yaml("first", "fd.sport = 443"),
        rule_yaml("second", "fd.sport > 0"),
        rule_yaml("off", "fd.sport > 0")
            .replace("priority: INFO", "priority: INFO\n  enabled: false"),
        rule_yaml("loud", "fd.sport > 0").replace("priority: INFO", "priority: CRITICAL"),
    ]
    .concat();
    let ev = TestEvent::connect(ip("198.51.100.1"), 443);
    let all = load_text(&yaml, &all_matches()).ruleset;
    assert_eq!(matched(&all, &ev), ["first", "second", "loud"]);
    assert_eq!(all.rules().len(), 4);
    assert_eq!(all.active_len(), 3);
    let first = load_text(&yaml, &Options::default()).ruleset;
    assert_eq!(matched(&first, &ev), ["first"]);
    let severe = Options {
        rule_matching: RuleMatching::All,
        min_priority: Priority::Warning,
        ..Options::default()
    };
    assert_eq!(matched(&load_text(&yaml, &severe).ruleset, &ev), ["loud"]);
    let id = all.find("off").unwrap();
    assert!(!all.rule(id).unwrap().enabled());
    assert!(all.rule(id).unwrap().matches(&ev));
    assert_eq!("all".parse::<RuleMatching>(), Ok(RuleMatching::All));
    assert!("some".parse::<RuleMatching>().is_err());
}

#[test]
fn event_types_outside_the_hooks() {
    let rules = ruleset(
        &[
            rule_yaml("open", "evt.type in (open, openat)"),
            rule_yaml("any", "proc.name = curl"),
            rule_yaml("not_connect", "not evt.type = connect"),
        ]
        .concat(),
    );
    let connect = TestEvent::connect(ip("198.51.100.1"), 80);
    assert_eq!(matched(&rules, &connect), ["any"]);
    assert_eq!(
        matched(&rules, &TestEvent::udp_send(ip("198.51.100.1"), 80)),
        ["any", "not_connect"]
    );
    let odd = connect.clone().with(FieldId::EvtType, "open");
    assert_eq!(matched(&rules, &odd), ["open", "any", "not_connect"]);
    let none = connect.without(FieldId::EvtType);
    assert_eq!(matched(&rules, &none), ["any", "not_connect"]);
}

#[test]
fn outputs_render_missing_values_and_json_types() {
    let rules = ruleset(
        "- rule: r
  desc: d
  condition: fd.sport > 0
  output: 'port=%fd.sport pod=%k8s.pod.name net=%egret.v4_mapped at=%evt.time app=%k8s.pod.label[app] again=%fd.sport %container.info'
  priority: info
",
    );
    let ev = TestEvent::connect(ip("198.51.100.1"), 443);
    let rule = &rules.rules()[0];
    assert_eq!(rule.priority(), Priority::Informational);
    let out = rule.render(&ev);
    // `%container.info` expands to nothing, as in Falco.
    assert_eq!(
        out.output,
        "port=443 pod=<NA> net=false at=22:13:20.123456789 app=<NA> again=443 "
    );
    let json: Vec<(String, serde_json::Value)> = out
        .fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(
        json,
        [
            ("fd.sport".to_string(), serde_json::json!(443)),
            ("k8s.pod.name".to_string(), serde_json::Value::Null),
            ("egret.v4_mapped".to_string(), serde_json::json!(false)),
            (
                "evt.time".to_string(),
                serde_json::json!(1_700_000_000_123_456_789u64)
            ),
            ("k8s.pod.label[app]".to_string(), serde_json::Value::Null),
        ]
    );
    assert_eq!(rule.output_fields().len(), 5);
}

#[test]
fn rulesets_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<egret_rules::Ruleset>();
    shared::<egret_rules::Rule>();
    let rules = std::sync::Arc::new(one_rule("proc.exepath regex '.*/curl'"));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let rules = rules.clone();
            std::thread::spawn(move || fires(&rules, &TestEvent::connect(ip("198.51.100.1"), 1)))
        })
        .collect();
    for w in workers {
        assert!(w.join().unwrap());
    }
    // Events can also be passed as trait objects.
    let event: &dyn egret_rules::Event = &TestEvent::connect(ip("198.51.100.1"), 1);
    let mut ids = Vec::new();
    rules.evaluate(event, &mut ids);
    assert_eq!(ids.len(), 1);
}

/// Rules that read the call's result (through a macro too) are told apart,
/// and each phase runs only its own rules.
#[test]
fn result_rules_are_known_and_evaluated_in_their_phase() {
    use egret_rules::Phase;
    let text = "
- macro: outbound_ok
  condition: (evt.rawres >= 0 or evt.res = EINPROGRESS)
- rule: Result rule
  desc: reads the result through a macro
  condition: evt.type = connect and outbound_ok
  output: res=%evt.res
  priority: WARNING
- rule: Attempt rule
  desc: does not read it (the output may)
  condition: evt.type = connect and fd.sport = 443
  output: res=%evt.res args=%evt.args
  priority: WARNING
- rule: Socket rule
  desc: reads evt.args, but never sees connects
  condition: evt.type = socket and evt.args contains AF_PACKET
  output: x
  priority: WARNING
";
    let options = Options {
        rule_matching: RuleMatching::All,
        ..Options::default()
    };
    let loaded = load_text(text, &options);
    assert!(loaded.diagnostics.is_empty(), "{:?}", diagnostics(&loaded));
    let rules = loaded.ruleset;
    let id = |name| rules.find(name).unwrap();
    assert!(rules.reads_result(id("Result rule")));
    assert!(!rules.reads_result(id("Attempt rule")));
    assert!(rules.reads_result(id("Socket rule")));
    assert!(rules.connects_read_result());
    let fields = rules.rule(id("Result rule")).unwrap().condition_fields();
    assert!(fields.contains(&FieldId::EvtRawres) && fields.contains(&FieldId::EvtRes));

    let names = |event: &TestEvent, phase| {
        let mut ids = Vec::new();
        rules.evaluate_phase(event, &mut ids, phase);
        ids.iter()
            .map(|i| rules.rule(*i).unwrap().name().to_string())
            .collect::<Vec<_>>()
    };
    let refused = TestEvent::connect(ip("203.0.113.7"), 443)
        .with(FieldId::EvtRes, "ECONNREFUSED")
        .with(FieldId::EvtRawres, -111i64);
    assert_eq!(names(&refused, Phase::All), ["Attempt rule"]);
    assert_eq!(names(&refused, Phase::Attempt), ["Attempt rule"]);
    assert!(names(&refused, Phase::Result).is_empty());
    let done = TestEvent::connect(ip("203.0.113.7"), 443)
        .with(FieldId::EvtRes, "SUCCESS")
        .with(FieldId::EvtRawres, 0i64);
    assert_eq!(names(&done, Phase::Result), ["Result rule"]);
    assert_eq!(names(&done, Phase::All), ["Result rule", "Attempt rule"]);

    let plain = load_text(SEED, &Options::default()).ruleset;
    assert!(
        !plain.connects_read_result(),
        "the seed rule alerts at once"
    );
}

/// Flow records (`evt.type = close`) reach only rules that name `close`:
/// rules written for attempts, without an evt.type condition or with a
/// negated one, never fire once more per flow end.
#[test]
fn close_events_reach_only_rules_naming_close() {
    let text = "
- rule: Any Destination
  desc: no evt.type condition
  condition: fd.sip = 203.0.113.7
  output: any (%fd.name)
  priority: WARNING
  warn_evttypes: false
- rule: Not Connect
  desc: negated evt.type
  condition: evt.type != connect and fd.sip = 203.0.113.7
  output: not connect (%fd.name)
  priority: WARNING
  warn_evttypes: false
- rule: Big Flow
  desc: flow records only
  condition: evt.type = close and flow.bytes_out >= 1000 and flow.prev_bytes_out < 1000
  output: big (%flow.bytes_out %fd.cip:%fd.cport)
  priority: WARNING
";
    let options = Options {
        rule_matching: RuleMatching::All,
        ..Options::default()
    };
    let loaded = load_text(text, &options);
    assert!(loaded.diagnostics.is_empty(), "{:?}", diagnostics(&loaded));
    let rules = loaded.ruleset;
    let names = |event: &TestEvent| {
        let mut ids = Vec::new();
        rules.evaluate(event, &mut ids);
        ids.iter()
            .map(|id| rules.rule(*id).unwrap().name().to_string())
            .collect::<Vec<_>>()
    };
    let close = |bytes: u64, prev: u64| {
        TestEvent::connect(ip("203.0.113.7"), 443)
            .with(FieldId::EvtType, "close")
            .with(FieldId::FlowBytesOut, bytes)
            .with(FieldId::FlowPrevBytesOut, prev)
            .with(FieldId::ClientIp, ip("198.51.100.1"))
            .with(FieldId::ClientPort, 40000u64)
    };
    assert_eq!(
        names(&TestEvent::connect(ip("203.0.113.7"), 443)),
        ["Any Destination"]
    );
    assert_eq!(names(&close(5000, 0)), ["Big Flow"]);
    assert!(names(&close(5000, 2000)).is_empty(), "fires once per flow");
    assert!(names(&close(10, 0)).is_empty());
    // A UDP send is not a connect: the negated rule fires there, not on close.
    assert_eq!(
        names(&TestEvent::udp_send(ip("203.0.113.7"), 53)),
        ["Any Destination", "Not Connect"]
    );
}
