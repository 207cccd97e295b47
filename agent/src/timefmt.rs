//! RFC 3339 timestamps with nanosecond precision, the form Falco and
//! falcosidekick use in `time`.
use time::OffsetDateTime;

pub fn rfc3339_nanos(unix_ns: u64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns)) else {
        // u64 nanoseconds always fit; keep a total function anyway.
        return String::from("1970-01-01T00:00:00.000000000Z");
    };
    // Written digit by digit: `format!` with seven padded integers cost
    // more than the rest of building an alert (and the audit log pays it
    // for every event). u64 nanoseconds end in 2554, so the year always
    // has four digits.
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut out[0..4], t.year().unsigned_abs());
    put_digits(&mut out[5..7], u32::from(u8::from(t.month())));
    put_digits(&mut out[8..10], u32::from(t.day()));
    put_digits(&mut out[11..13], u32::from(t.hour()));
    put_digits(&mut out[14..16], u32::from(t.minute()));
    put_digits(&mut out[17..19], u32::from(t.second()));
    put_digits(&mut out[20..29], t.nanosecond());
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// `value` in decimal, zero padded to fill `out` (high digits dropped).
fn put_digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_nanos() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_000_000_001),
            "1970-01-01T00:00:01.000000001Z"
        );
        // 2026-11-22T04:58:55.902386141Z, the README's example.
        assert_eq!(
            rfc3339_nanos(1_795_323_535_902_386_141),
            "2026-11-22T04:58:55.902386141Z"
        );
        assert_eq!(rfc3339_nanos(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }
}
