//! Alerts on stdout, one JSON object per line: the format Falco prints and
//! log collectors pick up. Written in line, once per batch: a reader that
//! stops reading slows the pipeline rather than losing alerts.
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Raised, json_line};

pub struct AlertLines<W> {
    out: W,
    buf: Vec<u8>,
    written: u64,
}

/// Appends each alert to `out` as a JSON line (the bytes serde_json
/// would write: [`json_line`]). Cannot fail today; the `Result` leaves
/// room for an encoder that can.
pub fn encode(alerts: &[Raised], out: &mut Vec<u8>) -> std::io::Result<()> {
    for raised in alerts {
        json_line::write_alert(out, &raised.alert);
        out.push(b'\n');
    }
    Ok(())
}

impl<W: AsyncWrite + Unpin> AlertLines<W> {
    pub fn new(out: W) -> Self {
        AlertLines {
            out,
            buf: Vec::with_capacity(16 * 1024),
            written: 0,
        }
    }

    /// One write and one flush per batch; nothing for a batch without alerts.
    pub async fn write(&mut self, alerts: &[Raised]) -> std::io::Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        encode(alerts, &mut self.buf)?;
        self.out.write_all(&self.buf).await?;
        self.out.flush().await?;
        self.written += alerts.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}
