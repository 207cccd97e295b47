//! A DingTalk custom robot on loopback, as strict as the real one: it
//! checks 加签 (`timestamp` within an hour, `sign` =
//! base64(HMAC-SHA256(secret, "timestamp\nsecret"))), allows 20 messages
//! per minute, and answers every request HTTP 200 with an `errcode`.
//! Stopped when dropped.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use ring::hmac;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

pub const SIGN_MISMATCH: i64 = 310000;
pub const SEND_TOO_FAST: i64 = 130101;

#[derive(Default)]
pub struct Tally {
    /// Bodies of accepted messages (`errcode: 0`).
    pub accepted: Vec<serde_json::Value>,
    /// Answers other than 0, by errcode.
    pub refused: BTreeMap<i64, usize>,
    window: VecDeque<Instant>,
    /// Taken by the first message (see [`DingTalk::start_slow_first`]).
    first_delay: Duration,
}

pub struct DingTalk {
    pub url: String,
    pub tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl Drop for DingTalk {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DingTalk {
    pub async fn start(secret: &str, per_minute: usize) -> DingTalk {
        DingTalk::start_slow_first(secret, per_minute, Duration::ZERO).await
    }

    /// As [`DingTalk::start`], but the first message arrives `delay` late
    /// (read, counted and answered after it), as over a slow first
    /// connection: the robot's minute then starts later than the sender's.
    pub async fn start_slow_first(secret: &str, per_minute: usize, delay: Duration) -> DingTalk {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tally = Arc::new(Mutex::new(Tally {
            first_delay: delay,
            ..Tally::default()
        }));
        let (t, secret) = (tally.clone(), secret.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (t, secret) = (t.clone(), secret.clone());
                tokio::spawn(serve(stream, t, secret, per_minute));
            }
        });
        DingTalk {
            url: format!("http://{addr}/robot/send?access_token=test-token"),
            tally,
            task,
        }
    }

    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.tally.lock().unwrap().accepted.clone()
    }

    pub fn refused(&self, code: i64) -> usize {
        self.tally
            .lock()
            .unwrap()
            .refused
            .get(&code)
            .copied()
            .unwrap_or(0)
    }
}

fn query(target: &str) -> BTreeMap<String, String> {
    let q = target.split_once('?').map_or("", |(_, q)| q);
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

fn verdict(
    target: &str,
    secret: &str,
    tally: &mut Tally,
    per_minute: usize,
) -> (i64, &'static str) {
    let q = query(target);
    if q.get("access_token").map(String::as_str) != Some("test-token") {
        return (300001, "token is not exist");
    }
    let (Some(ts), Some(sign)) = (q.get("timestamp"), q.get("sign")) else {
        return (SIGN_MISMATCH, "sign not match");
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i128;
    let fresh = ts
        .parse::<i128>()
        .is_ok_and(|t| (now_ms - t).abs() < 3_600_000);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let want = base64::engine::general_purpose::STANDARD
        .encode(hmac::sign(&key, format!("{ts}\n{secret}").as_bytes()).as_ref());
    if !fresh || *sign != want {
        return (SIGN_MISMATCH, "sign not match");
    }
    let now = Instant::now();
    while tally
        .window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        tally.window.pop_front();
    }
    if tally.window.len() >= per_minute {
        return (SEND_TOO_FAST, "send too fast, exceed 20 times per minute");
    }
    tally.window.push_back(now);
    (0, "ok")
}

async fn serve(mut s: TcpStream, tally: Arc<Mutex<Tally>>, secret: String, per_minute: usize) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_owned();
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end + 4..head_end + 4 + len].to_vec();
        buf.drain(..head_end + 4 + len);
        let delay = std::mem::take(&mut tally.lock().unwrap().first_delay);
        tokio::time::sleep(delay).await;
        let (code, msg) = {
            let mut t = tally.lock().unwrap();
            let (code, msg) = verdict(&target, &secret, &mut t, per_minute);
            if code == 0 {
                t.accepted
                    .push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
            } else {
                *t.refused.entry(code).or_default() += 1;
            }
            (code, msg)
        };
        let answer = format!(r#"{{"errcode":{code},"errmsg":"{msg}"}}"#);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if s.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
