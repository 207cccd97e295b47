use std::process::ExitCode;

use egret::{
    cli::{self, AlertCommand, Command, ConfigCommand, Parsed, RulesCommand},
    config::{Config, RuleMatching},
    outputs::webhook::EndpointConfig,
    tools,
};

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Parsed::Cli(cli) => cli,
        Parsed::Display(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Parsed::Error(message) => {
            report(format_args!("egret: error: {message}"));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config(ConfigCommand::Check { files }) => check_configs(&files),
        Command::Rules(RulesCommand::Check {
            paths,
            skip_unsupported_rules,
        }) => check_rules(&paths, skip_unsupported_rules),
        Command::Advise(command) => egret::advise::command::main(command),
        Command::Quarantine(args) => quarantine(&args),
        Command::Rules(RulesCommand::Fields) => exit(tools::rules_fields(&mut std::io::stdout())),
        Command::Rules(RulesCommand::Dump) => exit(tools::rules_dump(&mut std::io::stdout())),
        Command::Rules(RulesCommand::List {
            paths,
            skip_unsupported_rules,
        }) => match tools::rules_list(&paths, skip_unsupported_rules, &mut std::io::stdout()) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => fail(&err),
        },
        Command::Rules(RulesCommand::Test {
            paths,
            event,
            rule_matching,
            skip_unsupported_rules,
        }) => {
            let matching = match rule_matching.as_deref() {
                Some("all") => RuleMatching::All,
                _ => RuleMatching::First,
            };
            let options = egret::ruleset::options(matching, skip_unsupported_rules);
            match tools::rules_test(&paths, &event, &options, &mut std::io::stdout()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(err) => fail(&err),
            }
        }
        Command::Alert(AlertCommand::Test {
            config,
            options,
            webhooks,
        }) => {
            let mut config = match Config::load_with_overrides(config.as_deref(), &options) {
                Ok(config) => config,
                Err(err) => {
                    report(format_args!("egret: error: {err}"));
                    return ExitCode::from(2);
                }
            };
            config
                .webhooks
                .extend(webhooks.iter().map(EndpointConfig::from_url));
            // Rejections and errcodes are logged; show them.
            let _ = init_logging(&cli.log_level.unwrap_or_else(|| "warn".into()));
            alert_test(&config)
        }
        Command::Run(args) => {
            let config = match Config::for_run(*args) {
                Ok(config) => config,
                Err(err) => {
                    report(format_args!("egret: error: {err}"));
                    return ExitCode::from(2);
                }
            };
            let log_level = cli
                .log_level
                .or_else(|| config.log_level.clone())
                .unwrap_or_else(|| "info".into());
            if let Err(message) = init_logging(&log_level) {
                report(format_args!("egret: error: {message}"));
                return ExitCode::from(2);
            }
            run_agent(config)
        }
    }
}

fn exit(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(format_args!("egret: error: {err}"));
            ExitCode::FAILURE
        }
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    report(format_args!("egret: error: {}", one_line(err)));
    ExitCode::FAILURE
}

fn alert_test(config: &Config) -> ExitCode {
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(tools::alert_test(config, &mut std::io::stdout())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => fail(&err),
    }
}

/// `egret quarantine …`: exit 0, or the failure's own code (see the
/// subcommand's help).
fn quarantine(args: &cli::QuarantineArgs) -> ExitCode {
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(egret::quarantine::client::run(args, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(format_args!("egret: error: {failure}"));
            ExitCode::from(failure.exit_code())
        }
    }
}

/// The one-thread runtime of the client subcommands; `None` after
/// reporting why it could not start.
fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            report(format_args!(
                "egret: error: starting the async runtime: {err}"
            ));
            None
        }
    }
}

fn init_logging(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|err| format!("invalid log level `{filter}`: {err}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

fn run_agent(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(format_args!(
                "egret: error: starting the async runtime: {err}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(egret::run::run(config));
    // Dropping the runtime would wait for every blocking task, including a
    // write to a stdout nobody reads; the shutdown bound is already spent.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Rule problems are one `file:line:col` per line, like a
            // compiler's; everything else is one line.
            let rules = err.chain().any(|cause| {
                matches!(
                    cause.downcast_ref(),
                    Some(egret::ruleset::RulesError::Invalid(_))
                )
            });
            let message = one_line(&err);
            if rules {
                report(format_args!("egret: error: {message}"));
            } else {
                report(format_args!("egret: error: {}", message.replace('\n', " ")));
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints to stderr without `eprintln!`'s panic when stderr is gone (a
/// crashed log collector must not turn an error exit into a hang or abort).
fn report(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// `egret config check`: every file, every problem, non-zero on any.
fn check_configs(files: &[std::path::PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match Config::load(file) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(err) => {
                failed = true;
                println!("{err}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `egret rules check`: every diagnostic, non-zero on any error.
fn check_rules(paths: &[std::path::PathBuf], skip_unsupported: bool) -> ExitCode {
    match egret::ruleset::check(paths, skip_unsupported) {
        Ok(diagnostics) => {
            for diagnostic in &diagnostics {
                println!("{diagnostic}");
            }
            let errors = diagnostics
                .iter()
                .filter(|d| d.severity == egret_rules::Severity::Error)
                .count();
            if errors > 0 {
                println!("{errors} error(s)");
                ExitCode::FAILURE
            } else {
                println!("ok ({} warning(s))", diagnostics.len());
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            println!("{err}");
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
    line
}

fn permission_denied(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EPERM || code == libc::EACCES)
    })
}
