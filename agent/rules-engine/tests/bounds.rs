//! What loading may cost: each hostile input ends in a clean error, within
//! a couple of seconds of CPU time (release build) and a few hundred MB.
//! One test, run alone in its binary, so the peak RSS it reads is its own.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::CpuTimer;

use egret_rules::{Options, ReadError, Severity, Source, load, read_source};

/// The process's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

fn first_error(text: &str) -> String {
    let loaded = load(&[Source::new("hostile.yaml", text)], &Options::default());
    loaded
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("no error for {:.60}", text))
}

/// Debug builds are several times slower; the bound is for release.
fn limit() -> Duration {
    if cfg!(debug_assertions) {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(2)
    }
}

fn timed(what: &str, f: impl FnOnce() -> String) -> String {
    let start = CpuTimer::start();
    let error = f();
    let took = start.elapsed();
    println!(
        "{what}: {took:?}, peak RSS {} MiB: {error:.150}",
        peak_rss_mib()
    );
    assert!(took < limit(), "{what} took {took:?}");
    error
}

/// A scalar of `size` bytes under an anchor, aliased `times` times inside an
/// ignored top-level item.
fn alias_bomb(size: usize, times: usize) -> String {
    let mut text = format!("- ignored: &big \"{}\"\n  copies:\n", "x".repeat(size));
    for _ in 0..times {
        text.push_str("    - *big\n");
    }
    text
}

struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn hostile_inputs_are_bounded() {
    let error = timed("1 MB scalar aliased 1000 times", || {
        first_error(&alias_bomb(1 << 20, 1000))
    });
    assert!(error.contains("MiB of text (aliases included)"), "{error}");
    let error = timed("10 MB scalar aliased 1000 times", || {
        first_error(&alias_bomb(10 << 20, 1000))
    });
    assert!(error.contains("MiB of text"), "{error}");
    let error = timed("billion laughs", || {
        let mut text = String::from("- l0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "- l{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        first_error(&text)
    });
    assert!(error.contains("YAML nodes"), "{error}");
    let error = timed("file over 64 MiB", || {
        first_error(&format!("# {}\n", "x".repeat(65 << 20)))
    });
    assert!(error.contains("larger than 64 MiB"), "{error}");
    let error = timed("NUL byte", || first_error("- list: a\n  items: [b\0]\n"));
    assert!(error.starts_with("hostile.yaml:2:12: error:"), "{error}");

    let dir = Temp(std::env::temp_dir().join(format!("egret-bounds-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let read = |path: &std::path::Path| read_source(path).map(|_| ()).unwrap_err();
    let error = timed("/dev/zero", || {
        read(std::path::Path::new("/dev/zero")).to_string()
    });
    assert!(
        error.contains("not a regular file (a character device)"),
        "{error}"
    );
    let fifo = dir.0.join("fifo.yaml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let error = timed("FIFO", || read(&fifo).to_string());
    assert!(error.contains("not a regular file (a FIFO)"), "{error}");
    let error = timed("directory", || read(&dir.0).to_string());
    assert!(error.contains("a directory"), "{error}");
    let latin1 = dir.0.join("latin1.yaml");
    std::fs::write(&latin1, b"- list: a\n  items: [caf\xe9]\n").unwrap();
    match read_source(&latin1) {
        Err(ReadError::Encoding { line, column, .. }) => assert_eq!((line, column), (2, 14)),
        other => panic!("{other:?}"),
    }
    let big = dir.0.join("big.yaml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(65 << 20).unwrap();
    assert!(matches!(read_source(&big), Err(ReadError::TooLarge { .. })));

    // UTF-16 with a byte-order mark loads, as in Falco.
    let utf16 = dir.0.join("utf16.yaml");
    let rule = "- rule: r\n  desc: d\n  condition: evt.type = connect and proc.name = café\n  output: o\n  priority: INFO\n";
    let bytes: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain(rule.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    std::fs::write(&utf16, bytes).unwrap();
    let text = read_source(&utf16).unwrap();
    let loaded = load(&[Source::new("utf16.yaml", &text)], &Options::default());
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    assert_eq!(loaded.ruleset.rules().len(), 1);

    // An IOC list of a million items (a tenth in debug builds) loads and is
    // used; libyaml's parsing is most of the time.
    let items: u32 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    let mut ioc = String::from("- list: ioc\n  items:\n");
    for i in 0..items {
        let [_, b, c, d] = i.to_be_bytes();
        ioc.push_str(&format!("    - \"10.{b}.{c}.{d}\"\n"));
    }
    ioc.push_str("- rule: r\n  desc: d\n  condition: evt.type = connect and fd.sip in (ioc)\n  output: o\n  priority: INFO\n");
    let start = CpuTimer::start();
    let loaded = load(&[Source::new("ioc.yaml", &ioc)], &Options::default());
    let took = start.elapsed();
    println!(
        "{items}-item list: {took:?}, peak RSS {} MiB",
        peak_rss_mib()
    );
    assert!(!loaded.has_errors(), "{:?}", &loaded.diagnostics[..1]);
    assert_eq!(loaded.ruleset.rules().len(), 1);
    assert!(took < limit() * 5, "{took:?}");

    let peak = peak_rss_mib();
    println!("peak RSS over all cases: {peak} MiB");
    assert!(peak < 768, "peak RSS {peak} MiB");
}
