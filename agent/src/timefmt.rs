//! RFC 3339 timestamps with nanosecond precision, the form Falco and
//! falcosidekick use in `time`.
use time::OffsetDateTime;

pub fn rfc3339_nanos(unix_ns: u64) -> String {
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns)) else {
        // u64 nanoseconds always fit; keep a total function anyway.
        return String::from("1970-01-01T00:00:00.000000000Z");
    };
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
    }
}
