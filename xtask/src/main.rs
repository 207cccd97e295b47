//! Tasks cargo cannot express on its own. `cargo xtask test` is the whole
//! suite CI runs: formatting, lints (host crates and the eBPF crate on its
//! own target), unit tests, the privileged end-to-end tests, a short fuzz
//! pass, a short benchmark run and the kernel-hook tests in a Linux 6.1
//! guest (`cargo xtask vm-test`).
mod bench;
mod image;
mod test;
mod vm;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("lint") => test::lint(),
        Some("fuzz") => {
            let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
            test::fuzz(seconds)
        }
        Some("bench") => bench::run(&args[1..]),
        Some("image") => image::run(&args[1..]),
        Some("vm-test") => vm::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <test [--no-lint] [--no-fuzz] [--no-bench] [--no-vm] | lint | fuzz [SECONDS] | bench [--short] [--only N,M] | image [--binary PATH] | vm-test [--kernel PATH] [--timeout SECS] [--filter NAME]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
