//! `egret quarantine list|add|remove`: a client of a node's control API,
//! with the token file and/or client certificate the agent asks for.
use std::{io::Write, path::Path, time::Duration};

use serde_json::{Value, json};

use crate::cli::{QuarantineArgs, QuarantineCommand};

/// Why the command failed; each has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad arguments or an unreadable local file: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The agent answered with an error status: exit 1.
    #[error("{0}")]
    Refused(String),
    /// No answer: connection, TLS handshake, timeout: exit 3.
    #[error("{0}")]
    Unreachable(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::Usage(format!("{what} {}: {e}", path.display())))
}

fn client(args: &QuarantineArgs) -> Result<reqwest::Client, Failure> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &args.ca {
        let pem = read(ca, "--ca")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Failure::Usage(format!("--ca {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(Failure::Usage(format!(
                "--ca {}: no PEM certificate",
                ca.display()
            )));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let mut pem = read(cert, "--cert")?;
        pem.push(b'\n');
        pem.extend(read(key, "--key")?);
        // The key's bytes never reach the message.
        let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
            Failure::Usage(format!(
                "--cert {} / --key {}: not a PEM certificate and private key",
                cert.display(),
                key.display()
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| Failure::Usage(format!("HTTP client: {}", chain(&e))))
}

fn token(args: &QuarantineArgs) -> Result<Option<String>, Failure> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    let text = String::from_utf8(read(path, "--token-file")?)
        .map_err(|_| Failure::Usage(format!("--token-file {}: not text", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::Usage(format!(
            "--token-file {}: empty",
            path.display()
        )));
    }
    Ok(Some(token.to_owned()))
}

/// An error with its causes, on one line (TLS failures hide in sources).
fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// Runs one subcommand, writing its result to `out`.
pub async fn run(args: &QuarantineArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let base = args.url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Failure::Usage(format!(
            "--url `{}`: expected http://HOST:PORT or https://HOST:PORT",
            args.url
        )));
    }
    let client = client(args)?;
    let token = token(args)?;
    let (method, path, body) = match &args.command {
        QuarantineCommand::List { .. } => (reqwest::Method::GET, "/v1/quarantines".into(), None),
        QuarantineCommand::Remove { id } => {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(Failure::Usage(format!("`{id}` is not a quarantine id")));
            }
            (
                reqwest::Method::DELETE,
                format!("/v1/quarantines/{id}"),
                None,
            )
        }
        QuarantineCommand::Add {
            container,
            pod_uid,
            pod,
            allow,
            ttl,
            reason,
            force,
        } => {
            let target = match (container, pod_uid, pod) {
                (Some(id), _, _) => json!({ "container_id": id }),
                (_, Some(uid), _) => json!({ "pod_uid": uid }),
                (_, _, Some(pod)) => {
                    let (namespace, name) = pod.split_once('/').ok_or_else(|| {
                        Failure::Usage(format!("--pod `{pod}`: expected NAMESPACE/NAME"))
                    })?;
                    json!({ "namespace": namespace, "pod": name })
                }
                _ => {
                    return Err(Failure::Usage(
                        "one of --container, --pod-uid or --pod is required".into(),
                    ));
                }
            };
            let mut body = json!({ "target": target, "allow": allow, "force": force });
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            (reqwest::Method::POST, "/v1/quarantines".into(), Some(body))
        }
    };
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = &token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request
        .send()
        .await
        .map_err(|e| Failure::Unreachable(format!("{base}: {}", chain(&e))))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| Failure::Unreachable(format!("{base}: reading the answer: {}", chain(&e))))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let reason = value["error"].as_str().unwrap_or(text.trim());
        return Err(Failure::Refused(format!("{base}: {status}: {reason}")));
    }
    let written = match &args.command {
        QuarantineCommand::List { json: true } => writeln!(out, "{text}"),
        QuarantineCommand::List { json: false } => print_table(&value, out),
        QuarantineCommand::Add { .. } => writeln!(
            out,
            "{}",
            value["id"].as_str().unwrap_or("(no id in the answer)")
        ),
        QuarantineCommand::Remove { id } => writeln!(out, "lifted {id}"),
    };
    written.map_err(|e| Failure::Usage(format!("writing the result: {e}")))
}

fn target_text(target: &Value) -> String {
    if let Some(id) = target["container_id"].as_str() {
        format!("container {id}")
    } else if let Some(uid) = target["pod_uid"].as_str() {
        format!("pod uid {uid}")
    } else {
        format!(
            "pod {}/{}",
            target["namespace"].as_str().unwrap_or("?"),
            target["pod"].as_str().unwrap_or("?")
        )
    }
}

fn print_table(value: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let empty = Vec::new();
    let entries = value["quarantines"].as_array().unwrap_or(&empty);
    writeln!(
        out,
        "{:<20} {:<8} {:<44} {:>9} {:>9} {:>9}  REQUESTED BY",
        "ID", "STATE", "TARGET", "CONNECTS", "SENDS", "PACKETS"
    )?;
    for q in entries {
        let blocked = &q["blocked"];
        writeln!(
            out,
            "{:<20} {:<8} {:<44} {:>9} {:>9} {:>9}  {}",
            q["id"].as_str().unwrap_or("?"),
            q["state"].as_str().unwrap_or("?"),
            target_text(&q["target"]),
            blocked["connects"].as_u64().unwrap_or(0),
            blocked["sends"].as_u64().unwrap_or(0),
            blocked["packets"].as_u64().unwrap_or(0),
            q["requested_by"].as_str().unwrap_or("?"),
        )?;
    }
    Ok(())
}
