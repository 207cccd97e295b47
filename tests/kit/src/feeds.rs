//! Synthetic rule files at scale, for `cargo xtask bench` (scenarios 11 and
//! 12) and the pipeline bench: a threat-intelligence list of any size and a
//! rule set of any number of rules. Every address is documentation or
//! reserved space (198.51.100.1, 240.0.0.0/4, 2001:db8::/32): the lists are
//! evaluated, never contacted.
use std::fmt::Write as _;

/// The one address every feed lists: what the benchmarks connect to (inside
/// their own network namespace) so that each connect alerts.
pub const FEED_HIT: &str = "198.51.100.1";

/// The `i`-th IPv4 host of a feed: scattered over 240.0.0.0/4 (class E,
/// never routed), so lookups miss the cache as a real feed's do.
pub fn feed_v4(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0xf000_0000 | (i.wrapping_mul(2_654_435_761) & 0x0fff_ffff))
}

/// `n` feed entries, one per line, as list items: 7 in 10 IPv4 hosts, 2 in
/// 10 IPv6 hosts (quoted: a plain `::` scalar ends badly in a flow list),
/// 1 in 10 IPv4 networks (/24 to /28); [`FEED_HIT`] first.
pub fn feed_items(n: u32) -> String {
    let mut out = String::with_capacity(n as usize * 18);
    out.push_str(FEED_HIT);
    for i in 1..n {
        out.push_str(",\n    ");
        match i % 10 {
            0 => {
                let prefix = 24 + (i / 10) % 5;
                let net = u32::from(feed_v4(i)) & (u32::MAX << (32 - prefix));
                let _ = write!(out, "{}/{prefix}", std::net::Ipv4Addr::from(net));
            }
            1 | 2 => {
                let _ = write!(
                    out,
                    "\"2001:db8:{:x}:{:x}::{:x}\"",
                    i >> 16,
                    i & 0xffff,
                    i.wrapping_mul(40_503) & 0xffff | 1
                );
            }
            _ => {
                let _ = write!(out, "{}", feed_v4(i));
            }
        }
    }
    out
}

/// A rule file with an `ioc_list` of `n` entries ([`feed_items`]) and one
/// rule alerting on connects and sends to any of them.
pub fn ioc_rules(n: u32) -> String {
    format!(
        "- list: ioc_list\n  items: [\n    {}]\n\n\
         - rule: IOC Destination\n  desc: a destination listed in a threat-intelligence feed\n  \
         condition: evt.type in (connect, sendto) and fd.sip in (ioc_list)\n  \
         output: connection to a listed address (connection=%fd.name pid=%proc.pid command=%proc.cmdline)\n  \
         priority: CRITICAL\n  tags: [bench, ioc]\n",
        feed_items(n)
    )
}

/// `n` rules of the shapes large rule sets are made of: most name a
/// destination (one host, a host and port, a small network, IPv6), one in
/// eight names a process and a port, one in sixteen is a catch-all on a
/// port. None of them matches the pipeline bench's traffic, so every event
/// pays for the whole set.
pub fn many_rules(n: u32) -> String {
    let mut out = String::new();
    for i in 0..n {
        let condition = match i % 16 {
            0 => format!("evt.type = connect and fd.sport = {}", 20_000 + i % 40_000),
            1 | 9 => format!(
                "evt.type = connect and proc.name = \"tool-{i}\" and fd.sport in (22, {})",
                20_000 + i % 40_000
            ),
            2 => format!(
                "evt.type in (connect, sendto) and fd.snet in (\"{}/28\")",
                std::net::Ipv4Addr::from(u32::from(feed_v4(i)) & !15)
            ),
            3 => format!(
                "evt.type = connect and fd.sip = \"2001:db8:ffff:{:x}::1\"",
                i & 0xffff
            ),
            4..=6 => format!(
                "evt.type = connect and fd.sip = {} and fd.sport = 443",
                feed_v4(i)
            ),
            _ => format!(
                "evt.type in (connect, sendto) and fd.sip in ({}, {}) and not proc.name in (curl, wget)",
                feed_v4(i),
                feed_v4(i + 1_000_000)
            ),
        };
        let _ = write!(
            out,
            "- rule: Generated {i}\n  desc: generated rule {i}\n  condition: {condition}\n  \
             output: generated {i} (connection=%fd.name command=%proc.cmdline)\n  \
             priority: WARNING\n  tags: [bench]\n\n"
        );
    }
    out
}
