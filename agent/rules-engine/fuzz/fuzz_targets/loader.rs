//! Arbitrary rule files, loaded after the bundled rules so that overrides
//! and appends have something to act on.
#![no_main]

use egret_rules::{Options, RuleMatching, Source, TestEvent, load};
use libfuzzer_sys::fuzz_target;

const EGRESS: &str = include_str!("../../../../rules/egress.yaml");

/// libyaml-safer 0.3 still has `panic!` paths (e.g. a tag followed by `,`
/// in a flow collection). Egret's loader catches panics raised inside the
/// parser and reports the file as invalid (yaml.rs), and that is what this
/// target checks: a panic from the parser is left to unwind to that guard,
/// every other panic aborts at once as libfuzzer-sys arranges. A parser
/// panic the guard failed to catch would still abort in the fuzz wrapper.
fn let_parser_panics_unwind() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let aborting = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parser = info
                .location()
                .is_some_and(|at| at.file().contains("libyaml-safer"));
            if !in_parser {
                aborting(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    let_parser_panics_unwind();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = Options {
        rule_matching: RuleMatching::All,
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
