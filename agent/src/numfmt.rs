//! Decimal and IPv4 text written into caller-provided buffers. Per-event
//! code (fd.name, metric labels) uses these instead of `core::fmt`, which
//! cost more than the rest of the work it was part of.
use std::net::Ipv4Addr;

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
}
