//! Arbitrary condition text: parsed alone, then compiled as a rule and
//! evaluated, which also exercises macro-free compilation and the matchers.
#![no_main]

use egret_rules::{Options, RuleMatching, Source, TestEvent, load, parse_condition};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::let_parser_panics_unwind();
    let Ok(condition) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_condition(condition);
    let yaml = format!(
        "- rule: r\n  desc: d\n  condition: |\n    {}\n  output: \"%proc.name %fd.sip\"\n  priority: info\n",
        condition.replace('\n', "\n    ")
    );
    let options = Options {
        rule_matching: RuleMatching::All,
        ..Options::default()
    };
    let loaded = load(&[Source::new("fuzz.yaml", &yaml)], &options);
    let events = [
        TestEvent::connect("203.0.113.7".parse().unwrap(), 443)
            .in_pod("ns", "pod", "img:1")
            .with_label("app", "web"),
        TestEvent::udp_send("::ffff:10.0.0.1".parse().unwrap(), 53),
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
