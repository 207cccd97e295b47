//! Load loops the benchmarks drive: connect and send loops, connect rates
//! alternated between cgroups, bulk streams. Each prints its rate.
use std::{
    io::{Error, ErrorKind, Result},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use super::unspecified;

pub(crate) fn connect_loop(addr: SocketAddr, count: u64) -> Result<()> {
    if addr.port() == 0 {
        return connect_accept_loop(addr, count);
    }
    let start = Instant::now();
    for _ in 0..count {
        drop(TcpStream::connect(addr)?);
    }
    report_rate(count, start);
    Ok(())
}

/// A connected UDP socket sending `count` datagrams with its peer's address
/// given each time (`sendto`): every send runs the sendmsg hook, which
/// finds it a repeat of the connect. Send errors (an ICMP port unreachable
/// from the peer turns into ECONNREFUSED on the next send) are expected:
/// the hook has run by then.
pub(crate) fn udp_repeat(addr: SocketAddr, count: u64) -> Result<()> {
    let socket = UdpSocket::bind(unspecified(&addr))?;
    socket.connect(addr)?;
    let start = Instant::now();
    for _ in 0..count {
        let _ = socket.send_to(b"egret", addr);
    }
    report_rate(count, start);
    Ok(())
}

/// Connect, accept and close on one thread while `more(done)` holds, then
/// print connects/s. A separate accept thread would turn every connect
/// into a cross-CPU wake-up, which on a small VM costs more than the
/// connect itself and drowns what is being measured.
fn connect_accept_while(addr: SocketAddr, more: impl Fn(u64, Instant) -> bool) -> Result<()> {
    accept_while(std::net::TcpListener::bind(addr)?, more)
}

/// [`connect_for`] with the listener in this process's cgroup at start and
/// the connecting sockets in the cgroup whose `procs` file it then joins (a
/// socket's cgroup is its creator's at creation; an accepted one inherits
/// its listener's).
pub(crate) fn connect_out_for(
    addr: SocketAddr,
    run: Duration,
    procs: &std::path::Path,
) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    std::fs::write(procs, std::process::id().to_string()).map_err(|err| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("joining the cgroup through {}: {err}", procs.display()),
        )
    })?;
    accept_while(listener, |_, start| start.elapsed() < run)
}

/// Joins the cgroup whose cgroup.procs `file` is.
fn join(file: &mut std::fs::File) -> Result<()> {
    use std::io::Write as _;
    file.write_all(std::process::id().to_string().as_bytes())
        .map_err(|err| Error::new(ErrorKind::InvalidInput, format!("joining a cgroup: {err}")))
}

pub(crate) fn connect_alternate(
    addr: SocketAddr,
    blocks: u64,
    block: Duration,
    procs: [&std::path::Path; 2],
    both: bool,
) -> Result<()> {
    let open = |path: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|err| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("{}: {err}", path.display()),
                )
            })
    };
    let mut files = [open(procs[0])?, open(procs[1])?];
    let mut listeners = Vec::with_capacity(2);
    for file in &mut files {
        if both {
            join(file)?;
        }
        listeners.push(std::net::TcpListener::bind(addr)?);
    }
    let mut rates = [Vec::new(), Vec::new()];
    let mut totals = [(0u64, Duration::ZERO); 2];
    for i in 0..blocks.max(1) {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            join(&mut files[side])?;
            let listener = &listeners[side];
            let target = listener.local_addr()?;
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < block {
                let client = TcpStream::connect(target)?;
                let (server, _) = listener.accept()?;
                drop(client);
                drop(server);
                count += 1;
            }
            let took = start.elapsed();
            rates[side].push(count as f64 / took.as_secs_f64());
            totals[side].0 += count;
            totals[side].1 += took;
        }
    }
    let mut ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(a, b)| a / b).collect();
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let rate = |(count, took): (u64, Duration)| count as f64 / took.as_secs_f64();
    println!("{:.0} {:.0} {median:.4}", rate(totals[0]), rate(totals[1]));
    Ok(())
}

fn accept_while(
    listener: std::net::TcpListener,
    more: impl Fn(u64, Instant) -> bool,
) -> Result<()> {
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let mut count = 0u64;
    while more(count, start) {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        drop(client);
        drop(server);
        count += 1;
    }
    report_rate(count, start);
    Ok(())
}

fn connect_accept_loop(addr: SocketAddr, count: u64) -> Result<()> {
    connect_accept_while(addr, |done, _| done < count)
}

/// A TCP connection to itself on `addr` (port 0: any): the client end, and
/// a reader thread that discards everything and returns the byte count.
fn self_connection(addr: SocketAddr) -> Result<(TcpStream, std::thread::JoinHandle<Result<u64>>)> {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> Result<u64> {
        let (mut server, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match server.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    Ok((TcpStream::connect(addr)?, reader))
}

/// Closes the client end and checks the reader got all `sent` bytes.
fn finish_self_connection(
    client: TcpStream,
    reader: std::thread::JoinHandle<Result<u64>>,
    sent: u64,
) -> Result<()> {
    drop(client);
    let received = reader
        .join()
        .map_err(|_| Error::other("reader thread panicked"))??;
    if received != sent {
        return Err(Error::other(format!(
            "sent {sent}, received {received} bytes"
        )));
    }
    Ok(())
}

pub(crate) fn bulk(addr: SocketAddr, mib: u64) -> Result<()> {
    use std::io::Write as _;
    let chunk = vec![0x5au8; 1024 * 1024];
    let start = Instant::now();
    let (mut client, reader) = self_connection(addr)?;
    for _ in 0..mib {
        client.write_all(&chunk)?;
    }
    finish_self_connection(client, reader, mib * 1024 * 1024)?;
    println!("{:.1}", mib as f64 / start.elapsed().as_secs_f64());
    Ok(())
}

/// `bulk` for a fixed time instead of a fixed size, printing MiB/s: two
/// of these started together share the machine for the same interval, so
/// their rates compare (a fixed size would leave the faster one's rival
/// running alone at the end).
pub(crate) fn bulk_for(addr: SocketAddr, run: Duration) -> Result<()> {
    use std::io::Write as _;
    let chunk = vec![0x5au8; 128 * 1024];
    let (mut client, reader) = self_connection(addr)?;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < run {
        client.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    finish_self_connection(client, reader, sent)?;
    println!(
        "{:.1}",
        sent as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `connect-loop` (connect, accept, close on one thread) for a fixed time,
/// printing connects/s; see [`bulk_for`] for why a fixed time.
pub(crate) fn connect_for(addr: SocketAddr, run: Duration) -> Result<()> {
    connect_accept_while(addr, |_, start| start.elapsed() < run)
}

fn report_rate(count: u64, start: Instant) {
    println!("{:.0}", count as f64 / start.elapsed().as_secs_f64());
}

/// Paced connects to `addr.port()`, `+1`, `+2`…, so every attempt has its
/// own destination (webhook coalescing keys on it) and can be matched to
/// the alert it raises. The schedule is absolute: a late connect does not
/// delay the next ones.
pub(crate) fn connect_timed(addr: SocketAddr, count: u16, rate: f64) -> Result<()> {
    use std::time::{SystemTime, UNIX_EPOCH};

    if u32::from(addr.port()) + u32::from(count) > 65_536 {
        return Err(Error::new(ErrorKind::InvalidInput, "ports run past 65535"));
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent = Vec::with_capacity(usize::from(count));
    for i in 0..count {
        let due = start + interval * u32::from(i);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let target = SocketAddr::new(addr.ip(), addr.port() + i);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Refused or not, the attempt is what raises the alert.
        let _ = TcpStream::connect_timeout(&target, Duration::from_millis(500));
        sent.push((target.port(), at));
    }
    let mut out = String::with_capacity(sent.len() * 28);
    for (port, at) in sent {
        out.push_str(&format!("{port} {at}\n"));
    }
    print!("{out}");
    Ok(())
}
