use std::sync::atomic::Ordering;

use super::*;
use crate::{
    identity::{
        cgroups::{CgroupPaths, CgroupPathsConfig},
        netns::HostNetns,
        resolver::IdentityResolver,
        users::{UserNames, UserNamesConfig},
    },
    pipeline::decode::{Comm, DnsRecord, ExecRecord, L4Proto},
};

/// Processes that no longer exist, a uid no passwd names.
const GONE_PID: u32 = u32::MAX - 1;
const NAMELESS_UID: u32 = 4_000_000;

fn enricher() -> Enricher {
    let sources = IdentitySources {
        resolver: IdentityResolver::new(
            CgroupPaths::new("/nonexistent".into(), CgroupPathsConfig::default()),
            None,
        ),
        users: UserNames::new(UserNamesConfig::default()),
        host_netns: HostNetns::from_cookie(1),
    };
    Enricher::new(ProcessCache::new("/nonexistent", 64), Some(sources))
}

fn attempt() -> Record {
    Record::Egress(EgressAttempt {
        hook: Hook::Connect4,
        mono_ns: 1,
        wall_ns: 1,
        tgid: GONE_PID,
        tid: GONE_PID,
        uid: NAMELESS_UID,
        gid: 0,
        comm: Comm::from_raw([0; 16]),
        exec_id: 0,
        ppid: 0,
        cgroup_id: 7,
        netns_cookie: 1,
        socket_cookie: 1,
        l4proto: L4Proto::Tcp,
        ip_protocol: 6,
        daddr: "198.51.100.7".parse().unwrap(),
        dport: 443,
        v4_mapped: false,
        blocked: None,
        socket: None,
        flow: None,
    })
}

/// Lookup chains run: each starts by reading the (gone) process's view.
fn lookups(enricher: &Enricher) -> u64 {
    let sources = enricher.identity.as_ref().unwrap();
    sources.users.stats().process_gone.load(Ordering::Relaxed)
}

#[test]
fn a_nameless_uid_is_looked_up_once_not_per_event() {
    let mut enricher = enricher();
    let mut out = Vec::new();
    enricher.process_batch((0..100).map(|_| attempt()).collect(), &mut out);
    assert_eq!(out.len(), 100);
    assert!(out.iter().all(|e| e.user_name.is_none()));
    assert_eq!(lookups(&enricher), 1, "one lookup chain for 100 events");

    // An exec in the cgroup may bring a process that can answer.
    let exec = Record::Exec(ExecRecord {
        tgid: GONE_PID,
        ppid: 1,
        uid: NAMELESS_UID,
        gid: 0,
        exec_id: 9,
        cgroup_id: 7,
        comm: Comm::from_raw([0; 16]),
        filename: "/bin/x".into(),
        argv: Some(vec!["x".into()]),
        args_truncated: false,
        exe: None,
    });
    enricher.process_batch(vec![exec, attempt()], &mut out);
    assert_eq!(lookups(&enricher), 2, "looked again at exec only");
}

#[test]
fn events_are_numbered_and_socket_peers_tracked() {
    let mut enricher = enricher();
    let mut out = Vec::new();
    let to = |cookie: u64, port: u16| {
        let Record::Egress(mut a) = attempt() else {
            unreachable!()
        };
        a.socket_cookie = cookie;
        a.dport = port;
        Record::Egress(a)
    };
    enricher.process_batch(
        vec![
            to(5, 53),
            to(5, 53),
            to(5, 54),
            to(6, 54),
            to(0, 1),
            to(0, 1),
        ],
        &mut out,
    );
    let nums: Vec<u64> = out.iter().map(|e| e.num).collect();
    assert_eq!(nums, [1, 2, 3, 4, 5, 6]);
    let changed: Vec<bool> = out.iter().map(|e| e.name_changed).collect();
    assert_eq!(changed, [true, false, true, true, true, true]);
    // Formatted when first read, through the rule engine's field API.
    assert!(out[0].args.get().is_none());
    assert!(matches!(
        egret_rules::Event::value(&out[0], egret_rules::FieldId::EvtArgs),
        egret_rules::Value::Str("res=-115(EINPROGRESS) addr=198.51.100.7:53")
    ));
}

#[test]
fn an_answer_names_the_connect_that_follows_it_in_its_scope() {
    use crate::pipeline::decode::dns::{Answer, AnswerData, DnsDirection, DnsMessage};
    let mut enricher = enricher();
    let dns = |cgroup_id: u64, name: &str| {
        Record::Dns(Box::new(DnsRecord {
            hook: Hook::DnsAnswer,
            direction: DnsDirection::Answer,
            tcp: false,
            mono_ns: 1,
            wall_ns: 1,
            cgroup_id,
            socket_cookie: 3,
            local: "10.0.0.2:40000".parse().unwrap(),
            remote: "10.0.0.53:53".parse().unwrap(),
            msg_len: 60,
            message: Ok(DnsMessage {
                id: 1,
                response: true,
                rcode: 0,
                qname: name.into(),
                qtype: 1,
                answers: vec![Answer {
                    name: name.into(),
                    ttl: 60,
                    data: AnswerData::Addr("198.51.100.7".parse().unwrap()),
                }],
            }),
        }))
    };
    let in_cgroup = |cgroup_id: u64| {
        let Record::Egress(mut a) = attempt() else {
            unreachable!()
        };
        a.cgroup_id = cgroup_id;
        a.mono_ns = 2;
        Record::Egress(a)
    };
    let mut out = Vec::new();
    // Ring buffer order: the answer, then the connect made with it.
    enricher.process_batch(
        vec![
            dns(7, "shop.example"),
            dns(8, "blog.example"),
            in_cgroup(7),
            in_cgroup(8),
            in_cgroup(9),
        ],
        &mut out,
    );
    let names: Vec<Option<&str>> = out.iter().map(|e| e.sip_name.as_deref()).collect();
    assert_eq!(
        names,
        [None, None, Some("shop.example"), Some("blog.example"), None]
    );
    assert_eq!(out[0].attempt.evt_type(), "dns");
    assert!(matches!(
        egret_rules::Event::value(&out[2], egret_rules::FieldId::SipName),
        egret_rules::Value::Str("shop.example")
    ));
    assert!(matches!(
        egret_rules::Event::value(&out[4], egret_rules::FieldId::SipName),
        egret_rules::Value::Missing
    ));
}
