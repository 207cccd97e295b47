//! Evaluation must not allocate: counted with a wrapping global allocator.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use egret_rules::{Options, RuleMatching, Source, TestEvent, load};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn evaluation_allocates_nothing() {
    let extra = "
- list: many
  items: [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5]
- rule: Everything
  desc: every operator on the hot path
  condition: >
    proc.name in (many) or proc.cmdline icontains CURL or proc.exepath glob '/usr/*/x'
    or proc.exepath regex '.*/python[0-9]' or proc.exepath pmatch (/opt) or k8s.pod.labels intersects (app:web)
    or k8s.pod.label[app] = api or fd.sport in (1, 2, 3) or fd.snet in (203.0.113.0/24, 2001:db8::/32)
    or fd.typechar = 7 or proc.cmdline bcontains 00
  output: o
  priority: INFO
";
    let loaded = load(
        &[
            Source::new("egress.yaml", include_str!("../../../rules/egress.yaml")),
            Source::new("extra.yaml", extra),
        ],
        &Options {
            rule_matching: RuleMatching::All,
            ..Options::default()
        },
    );
    assert!(!loaded.has_errors());
    let rules = loaded.ruleset;
    let events: Vec<TestEvent> = [
        "203.0.113.66",
        "10.0.0.1",
        "8.8.8.8",
        "2001:db8::1",
        "169.254.169.254",
    ]
    .iter()
    .flat_map(|d| {
        let ip = d.parse().unwrap();
        [
            TestEvent::connect(ip, 443),
            TestEvent::udp_send(ip, 53)
                .in_pod("ns", "p", "img:1")
                .with_label("app", "web"),
            TestEvent::connect(ip, 3333).in_pod("ns", "p", "img:1"),
        ]
    })
    .collect();
    let mut matches = Vec::with_capacity(16);
    let mut total = 0;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..100 {
        for event in &events {
            rules.evaluate(event, &mut matches);
            total += matches.len();
        }
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(total > 0);
    assert_eq!(after - before, 0, "evaluation allocated");
}
