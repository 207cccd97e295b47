//! The kernel's ignore verdict: a per-/8 head decides, or, inside a /8 the
//! table splits, the blocks below it byte by byte (a chain where a run of
//! bytes leads one way), and the trie where the blocks ran out (issue 19, goal 2). The programs are attached to a test
//! cgroup and every attempt is made from it, so the connect counters count
//! exactly these attempts.
use egret::kernel::{IgnoreSet, KernelProbes};
use egret_common::{DEFAULT_RINGBUF_BYTES, Hook, HookCounters};

use crate::support::{
    self,
    cgroup::TestCgroup,
    netns::{NetNs, V4_OTHER_NET, V4_SERVER, V6_SERVER},
};

/// What the agent ignores for rules that name only these destinations:
/// everything else, which the table writes as `::/0 → ignore` and one emit
/// entry per address.
fn ignored_for(condition: &str) -> IgnoreSet {
    let text = format!(
        "- rule: Only\n  desc: d\n  condition: evt.type = connect and ({condition})\n  output: o\n  priority: NOTICE\n"
    );
    let ruleset = egret::ruleset::compile(
        &[("only.yaml".to_string(), text)],
        &egret_rules::Options::default(),
    )
    .expect("rule compiles");
    let mut set = IgnoreSet::builtin();
    set.extend(ruleset.kernel_ignorable_networks());
    set
}

/// (ignored, emitted) by connect4 and connect6 together since `before`.
fn outcomes(probes: &KernelProbes, before: &[HookCounters]) -> (u64, u64) {
    let now = probes.counters().expect("kernel counters");
    [Hook::Connect4, Hook::Connect6]
        .iter()
        .map(|h| *h as usize)
        .fold((0, 0), |(i, e), h| {
            (
                i + now[h].ignored - before[h].ignored,
                e + now[h].emitted - before[h].emitted,
            )
        })
}

#[test]
fn ignore_heads_and_trie_decide_and_follow_a_reload() {
    if !support::privileged("ignore_heads_and_trie_decide_and_follow_a_reload") {
        return;
    }
    let cgroup = TestCgroup::new("ignore-heads");
    let mut probes = KernelProbes::load(DEFAULT_RINGBUF_BYTES).expect("load the kernel programs");
    let _ring = probes.take_events().expect("events ring buffer");
    let mut map = probes.take_ignore_map().expect("ignore maps");
    probes
        .attach(cgroup.path())
        .expect("attach to the test cgroup");
    let ns = NetNs::new("heads");
    let probe = support::probe_path();
    let attempt = |to: String| {
        ns.run_in_cgroup(cgroup.path(), &probe, &["tcp", &to]);
    };
    let (v4, other, v6) = (
        format!("{V4_SERVER}:80"),
        format!("{V4_OTHER_NET}:80"),
        format!("[{V6_SERVER}]:80"),
    );

    // 198/8 and 2001::/8 hold an emit entry each: a chain of 3 bytes down
    // to 198.51.100.1, one of 15 down to 2001:db8::1. The table is ::/0
    // ignore and the two exceptions, so ::/8 (::1) is one verdict.
    let tables = |map: &egret::kernel::IgnoreMap| {
        (
            map.entries(),
            map.split_heads(),
            map.blocks(),
            map.trie_entries(),
        )
    };
    map.replace(&ignored_for(
        "fd.sip = 198.51.100.1 or fd.sip = 2001:db8::1",
    ))
    .expect("program the maps");
    assert_eq!(tables(&map), (3, 2, 2, 0));
    let before = probes.counters().expect("kernel counters");
    attempt(v4.clone()); // chain: emit
    attempt(v6.clone()); // chain: emit
    assert_eq!(outcomes(&probes, &before), (0, 2), "named destinations");
    let before = probes.counters().expect("kernel counters");
    attempt(other.clone()); // head 203: ignore
    attempt("127.0.0.1:80".into()); // head 127: ignore
    attempt("198.51.100.2:80".into()); // chain, then ignore
    attempt("[::1]:80".into()); // head ::/8: ignore
    attempt("[2001:db8::2]:80".into()); // chain, then ignore
    assert_eq!(outcomes(&probes, &before), (5, 0), "everything else");

    // A reload: 198/8 and 2001::/8 become whole ignored heads, 203/8 splits
    // (its new blocks go to free slots; the old ones retire).
    map.replace(&ignored_for("fd.sip = 203.0.113.1"))
        .expect("reprogram the maps");
    assert_eq!(tables(&map), (2, 1, 1, 0));
    let before = probes.counters().expect("kernel counters");
    attempt(v4);
    attempt(v6);
    attempt("203.0.113.2:80".into());
    assert_eq!(outcomes(&probes, &before), (3, 0), "no longer named");
    let before = probes.counters().expect("kernel counters");
    attempt(other);
    assert_eq!(outcomes(&probes, &before), (0, 1), "the new destination");

    // Out of blocks: a pool of nine slots is six free ones (slots with a
    // low byte of 1 or 2 are never used, and 203/8's chain holds one until
    // this reload ends). The builder reaches 2001:db8::/56 and the trie
    // decides below it; the six levels are one chain. The reload first
    // waits out the grace period for the block the last one unlinked.
    map.limit_blocks(9);
    map.replace(&ignored_for("fd.sip = 2001:db8::1"))
        .expect("reprogram the maps");
    assert_eq!(tables(&map), (2, 1, 1, 1));
    let before = probes.counters().expect("kernel counters");
    attempt(format!("[{V6_SERVER}]:80")); // trie: emit
    attempt("[2001:db8::2]:80".into()); // trie: ignore
    attempt("[2001:db8:100::1]:80".into()); // off the chain: ignore
    attempt(format!("{V4_SERVER}:80")); // head: ignore
    assert_eq!(outcomes(&probes, &before), (3, 1), "past the pool");
    map.limit_blocks(usize::MAX);

    // Only the built-ins: every public /8 emits at its head.
    map.replace(&IgnoreSet::builtin()).expect("built-ins only");
    let before = probes.counters().expect("kernel counters");
    attempt(format!("{V4_SERVER}:80"));
    attempt("127.0.0.1:80".into());
    assert_eq!(outcomes(&probes, &before), (1, 1), "built-ins");
}
