//! Plain HTTP/1.1 on loopback for tests and benchmarks: a receiver that
//! answers 200 to every request and records each one (with the moment it had
//! fully arrived), and a one-shot GET client. Hand-written on purpose: the
//! agent is the thing under test, so the other end stays small and visible.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Request {
    /// Request line and headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
    /// CLOCK_REALTIME nanoseconds when headers and body had fully arrived.
    pub arrived_ns: u128,
}

/// Answers 200 to every request on 127.0.0.1, keep-alive and chunked bodies
/// included, one thread per connection; stops on drop.
pub struct Receiver {
    pub addr: SocketAddr,
    /// `Arc`s, so [`Receiver::requests`] copies them out of the lock and
    /// the connection threads never wait for a copy of every body.
    requests: Arc<Mutex<Vec<Arc<Request>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start() -> std::io::Result<Receiver> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let requests = Arc::<Mutex<Vec<Arc<Request>>>>::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let requests = requests.clone();
                    // Ends when the client closes the connection.
                    std::thread::spawn(move || {
                        let _ = serve(stream, &requests);
                    });
                }
            })
        };
        Ok(Receiver {
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    pub fn count(&self) -> usize {
        self.requests.lock().map_or(0, |r| r.len())
    }

    pub fn requests(&self) -> Vec<Request> {
        let requests = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        requests.iter().map(|r| Request::clone(r)).collect()
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn realtime_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Requests on one keep-alive connection until it closes.
fn serve(stream: TcpStream, requests: &Mutex<Vec<Arc<Request>>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut head = line.clone();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            head.push_str(&line);
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body)?;
            body
        };
        let request = Arc::new(Request {
            head,
            body,
            arrived_ns: realtime_ns(),
        });
        if let Ok(mut all) = requests.lock() {
            all.push(request);
        }
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// A one-shot GET: status code and body (chunked bodies decoded).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let err = |e: std::io::Error| format!("GET http://{addr}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(err)?;
    let text = String::from_utf8(raw).map_err(|e| format!("non-UTF-8 response: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end: {text}"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

pub fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size:?}: {e}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        rest = after[size..]
            .strip_prefix("\r\n")
            .ok_or("chunk without CRLF")?;
    }
}

/// The status code of a GET (0 when the request failed).
pub fn status(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path).map_or(0, |(code, _)| code)
}

/// The value of one exact series (`name{labels}`) in the agent's
/// `/metrics` at `addr`; `None` while unreachable or absent.
pub fn metric_value(addr: SocketAddr, series: &str) -> Option<f64> {
    let (code, body) = get(addr, "/metrics").ok()?;
    if code != 200 {
        return None;
    }
    body.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}
