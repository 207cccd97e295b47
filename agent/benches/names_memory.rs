//! Heap bytes the observed-DNS names cache holds at 100,000 (scope, IP)
//! entries, counted by a global allocator wrapper (not RSS, which the
//! allocator's own reuse blurs). Prints `entries bytes bytes_per_entry`
//! lines; `cargo xtask bench` scenario 9 reports them.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicIsize, Ordering},
};

use egret::pipeline::{
    decode::dns::{Answer, AnswerData, DnsMessage},
    enrich::names::{NamesCache, Scope},
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    for entries in [10_000u32, 100_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let mut cache = NamesCache::new(entries as usize);
        // 100 containers, each resolving its own names: realistic names
        // (~25 bytes), one answer per name.
        for i in 0..entries {
            let scope = Scope::of(Some(&format!("{:012x}", i % 100)), 0);
            let qname = format!("svc-{i}.shop.example.com");
            let message = DnsMessage {
                id: 1,
                response: true,
                rcode: 0,
                qname: qname.clone(),
                qtype: 1,
                answers: vec![Answer {
                    name: qname,
                    ttl: 300,
                    data: AnswerData::Addr(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                }],
            };
            cache.learn(scope, &message, 0);
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "{} {bytes} {:.0}",
            cache.len(),
            bytes as f64 / f64::from(entries)
        );
        drop(cache);
    }
}
