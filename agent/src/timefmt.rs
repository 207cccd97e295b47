//! RFC 3339 timestamps with nanosecond precision, the form Falco and
//! falcosidekick use in `time`.
use std::cell::Cell;

use time::OffsetDateTime;

thread_local! {
    /// The second last formatted on this thread and its
    /// `YYYY-MM-DDTHH:MM:SS` text: the events of a batch (and the alerts
    /// they raise) share their second, and the calendar arithmetic was most
    /// of this function's cost.
    static LAST_SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

pub fn rfc3339_nanos(unix_ns: u64) -> String {
    let (secs, nanos) = (unix_ns / 1_000_000_000, (unix_ns % 1_000_000_000) as u32);
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    let (last, date) = LAST_SECOND.get();
    if last == secs {
        out[..19].copy_from_slice(&date);
    } else {
        put_date_time(&mut out, secs);
        let mut date = [0; 19];
        date.copy_from_slice(&out[..19]);
        LAST_SECOND.set((secs, date));
    }
    put_digits(&mut out[20..29], nanos);
    // Only ASCII digits and separators were written, so this never fails;
    // `from_utf8_lossy` cost a tenth of the whole function.
    std::str::from_utf8(&out)
        .map(String::from)
        .unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch into `out[..19]`.
fn put_date_time(out: &mut [u8; 30], secs: u64) {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(secs as i64) else {
        // u64 nanoseconds always fit; keep a total function anyway.
        return;
    };
    // Written digit by digit: `format!` with seven padded integers cost
    // more than the rest of building an alert (and the audit log pays it
    // for every event). u64 nanoseconds end in 2554, so the year always
    // has four digits.
    put_digits(&mut out[0..4], t.year().unsigned_abs());
    put_digits(&mut out[5..7], u32::from(u8::from(t.month())));
    put_digits(&mut out[8..10], u32::from(t.day()));
    put_digits(&mut out[11..13], u32::from(t.hour()));
    put_digits(&mut out[14..16], u32::from(t.minute()));
    put_digits(&mut out[17..19], u32::from(t.second()));
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

    #[test]
    fn the_cached_second_never_leaks_into_another() {
        let reference = |ns: u64| {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.nanosecond()
            )
        };
        let base = 1_795_323_535_902_386_141u64;
        // Same second, the next second, back, far away, the epoch.
        for ns in [
            base,
            base + 1,
            base + 97_000_000,
            base + 1_000_000_000,
            base,
            base - 1_000_000_000,
            base + 86_400_000_000_000 * 400,
            0,
            999_999_999,
            1_000_000_000,
            base,
        ] {
            assert_eq!(rfc3339_nanos(ns), reference(ns), "{ns}");
        }
    }
}
