//! Shared by the memory benches (`names_memory`, `scale_memory`): a global
//! allocator wrapper that counts heap bytes live and their high-water mark
//! (not RSS, which the allocator's own reuse blurs), and the DNS answer
//! both fill the names cache with.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicIsize, Ordering},
};

use egret::pipeline::decode::dns::{Answer, AnswerData, DnsMessage};

pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

impl Counting {
    /// Heap bytes allocated and not yet freed.
    pub fn live() -> isize {
        LIVE.load(Ordering::Relaxed)
    }

    /// The most live since the last [`Counting::reset_peak`].
    pub fn peak() -> isize {
        PEAK.load(Ordering::Relaxed)
    }

    /// Starts a new high-water mark from what is live now.
    pub fn reset_peak() {
        PEAK.store(Counting::live(), Ordering::Relaxed);
    }
}

fn grow(delta: isize) {
    let now = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size() as isize);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The answer for name `i`: `svc-<i>.shop.example.com` (a realistic ~25
/// bytes) → one address in 10.0.0.0/8, TTL 300.
pub fn name_answer(i: u32) -> DnsMessage {
    let qname = format!("svc-{i}.shop.example.com");
    DnsMessage {
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
    }
}
