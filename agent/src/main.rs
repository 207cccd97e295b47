use std::process::ExitCode;

use egret::cli::{self, Command, Parsed};

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Parsed::Cli(cli) => cli,
        Parsed::Display(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Parsed::Error(message) => {
            eprintln!("egret: error: {message}");
            return ExitCode::from(2);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!(
                "egret: error: invalid --log-level `{}`: {err}",
                cli.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("egret: error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => egret::run::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("egret: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error chain on one line. Some library errors repeat their source in
/// their own message; a level already contained in the line is skipped.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        if line.contains(&message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&message);
    }
    if !line.contains("CAP_") && permission_denied(err) {
        line.push_str(" (Egret needs root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; see README)");
    }
    line.replace('\n', " ")
}

fn permission_denied(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EPERM || code == libc::EACCES)
    })
}
