//! Arbitrary rule files, loaded after the bundled rules so that overrides
//! and appends have something to act on.
#![no_main]

use egret_rules::{Options, RuleMatching, Source, TestEvent, load};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const EGRESS: &str = include_str!("../../../../rules/egress.yaml");

fuzz_target!(|data: &[u8]| {
    common::let_parser_panics_unwind();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first byte's low bit picks skip_unsupported, so both loader
    // paths (strict, and skipping what Egret lacks) are fuzzed.
    let options = Options {
        rule_matching: RuleMatching::All,
        skip_unsupported: data.first().is_some_and(|b| b & 1 == 1),
        ..Options::default()
    };
    let loaded = load(
        &[
            Source::new("egress.yaml", EGRESS),
            Source::new("fuzz.yaml", text),
        ],
        &options,
    );
    for d in &loaded.diagnostics {
        let _ = d.to_string();
    }
    let events = [
        TestEvent::connect("169.254.169.254".parse().unwrap(), 80).in_pod("ns", "pod", "img:1"),
        TestEvent::udp_send("2001:db8::1".parse().unwrap(), 53).with_label("app", "web"),
    ];
    let mut matches = Vec::new();
    for event in &events {
        loaded.ruleset.evaluate(event, &mut matches);
        for id in &matches {
            if let Some(rule) = loaded.ruleset.rule(*id) {
                let _ = rule.render(event);
            }
        }
    }
    let _ = loaded.ruleset.kernel_ignorable_networks();
});
