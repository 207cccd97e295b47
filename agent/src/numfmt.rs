//! Decimal, IPv4 and IPv6 text written into caller-provided buffers.
//! Per-event code (fd.name, metric labels) uses these instead of
//! `core::fmt`, which cost more than the rest of the work it was part of
//! (an IPv6 address through `core::fmt` took about 700 instructions).
use std::net::{Ipv4Addr, Ipv6Addr};

/// Writes `value` in decimal at the start of `out` (at least 5 bytes);
/// returns the length.
pub fn put_decimal(out: &mut [u8], mut value: u16) -> usize {
    let mut digits = [0u8; 5];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for (slot, digit) in out.iter_mut().zip(digits[..n].iter().rev()) {
        *slot = *digit;
    }
    n
}

/// Writes `ip` dotted-decimal at the start of `out` (at least 15 bytes);
/// returns the length.
pub fn put_ipv4(out: &mut [u8], ip: Ipv4Addr) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        len += put_decimal(&mut out[len..], u16::from(octet));
    }
    len
}

/// The longest text [`put_ipv6`] writes (`ffff:…:ffff`, or `::ffff:` and
/// a dotted quad).
pub const IPV6_MAX: usize = 39;

/// Writes `ip` at the start of `out` (at least [`IPV6_MAX`] bytes) exactly
/// as its `Display` does: lower-case hex groups without leading zeros, the
/// first longest run of two or more zero groups as `::`, and an
/// IPv4-mapped address as `::ffff:` and its dotted quad; returns the
/// length.
pub fn put_ipv6(out: &mut [u8], ip: Ipv6Addr) -> usize {
    if let Some(v4) = ip.to_ipv4_mapped() {
        out[..7].copy_from_slice(b"::ffff:");
        return 7 + put_ipv4(&mut out[7..], v4);
    }
    let groups = ip.segments();
    // The first longest run of zero groups (`>`: an equal later run loses).
    let (mut best_at, mut best_len, mut run_at, mut run_len) = (0, 0, 0, 0);
    for (i, &g) in groups.iter().enumerate() {
        if g == 0 {
            if run_len == 0 {
                run_at = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best_at, best_len) = (run_at, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    /// `part`'s groups, colon-separated, at `out[*len..]`.
    fn put_groups(out: &mut [u8], len: &mut usize, part: &[u16]) {
        for (i, &g) in part.iter().enumerate() {
            if i > 0 {
                out[*len] = b':';
                *len += 1;
            }
            *len += put_hex(&mut out[*len..], g);
        }
    }
    let mut len = 0;
    if best_len > 1 {
        put_groups(out, &mut len, &groups[..best_at]);
        out[len..len + 2].copy_from_slice(b"::");
        len += 2;
        put_groups(out, &mut len, &groups[best_at + best_len..]);
    } else {
        put_groups(out, &mut len, &groups);
    }
    len
}

/// `g` in lower-case hex without leading zeros; returns the length.
fn put_hex(out: &mut [u8], g: u16) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (4 - g.leading_zeros() / 4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        *slot = HEX[usize::from(g >> (4 * (digits - 1 - i)) & 0xf)];
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_display() {
        let mut buf = [0u8; 15];
        for ip in ["0.0.0.0", "255.255.255.255", "198.51.100.7", "10.0.12.1"] {
            let parsed: Ipv4Addr = ip.parse().unwrap();
            let len = put_ipv4(&mut buf, parsed);
            assert_eq!(&buf[..len], ip.as_bytes());
        }
        for n in [0u16, 9, 10, 443, 65535] {
            let len = put_decimal(&mut buf, n);
            assert_eq!(&buf[..len], n.to_string().as_bytes());
        }
    }

    /// Every address whose groups are drawn from a few values, zero runs of
    /// every length at every place among them, plus random ones: the same
    /// text as `Display`.
    #[test]
    fn ipv6_matches_display() {
        let mut buf = [0u8; IPV6_MAX];
        let mut check = |ip: Ipv6Addr| {
            let len = put_ipv6(&mut buf, ip);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), ip.to_string());
        };
        for ip in [
            "::",
            "::1",
            "::ffff:198.51.100.7",
            "::ffff:0.0.0.0",
            "2001:db8::1",
        ] {
            check(ip.parse().unwrap());
        }
        // Each group 0, 0xf, 0x1f0 or 0xffff: 4^8 addresses.
        for n in 0u32..1 << 16 {
            let mut g = [0u16; 8];
            for (i, slot) in g.iter_mut().enumerate() {
                *slot = [0, 0xf, 0x1f0, 0xffff][(n >> (2 * i) & 3) as usize];
            }
            check(Ipv6Addr::from(g));
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut g = [0u16; 8];
            for (i, slot) in g.iter_mut().enumerate() {
                // Half the groups zero, the rest of every width.
                let v = (x >> (8 * i)) as u16;
                *slot = if v & 1 == 0 { 0 } else { v >> (v % 13) };
            }
            check(Ipv6Addr::from(g));
        }
    }
}
