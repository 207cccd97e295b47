//! Heap bytes the observed-DNS names cache holds at 100,000 (scope, IP)
//! entries, counted by a global allocator wrapper (not RSS, which the
//! allocator's own reuse blurs). Prints `entries bytes bytes_per_entry`
//! lines; `cargo xtask bench` scenario 9 reports them.
// Only the live count is read here; the high-water mark is scale_memory's.
#[allow(dead_code)]
#[path = "support/counting.rs"]
mod counting;

use counting::{Counting, name_answer};
use egret::pipeline::enrich::names::{NamesCache, Scope};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    for entries in [10_000u32, 100_000] {
        let before = Counting::live();
        let mut cache = NamesCache::new(entries as usize);
        // 100 containers, each resolving its own names: realistic names
        // (~25 bytes), one answer per name.
        for i in 0..entries {
            let scope = Scope::of(Some(&format!("{:012x}", i % 100)), 0);
            let message = name_answer(i);
            cache.learn(scope, &message, 0);
        }
        let bytes = Counting::live() - before;
        println!(
            "{} {bytes} {:.0}",
            cache.len(),
            bytes as f64 / f64::from(entries)
        );
        drop(cache);
    }
}
