//! Flow modes (issue 15): known-size TCP uploads, a server that resets, a
//! UDP exchange, so tests can check a flow record's exact counts.
//!
//!   upload       <addr:port> <bytes> [pause_ms]: connect, print `local
//!                ip:port`, write `bytes` (with pause_ms: in six parts with
//!                that pause between), shut down writing, read to EOF (or an
//!                error: printed), print `elapsed <ns>` (connect to close).
//!   sink-exact   <addr:port> <bytes>: accept connections; read each until
//!                `bytes` or EOF, then close it; until killed.
//!   rst-listen   <addr:port>: accept connections; read once, then close
//!                with SO_LINGER 0 (a RST); until killed.
//!   udp-echo     <addr:port>: echo every datagram; until killed.
//!   udp-exchange <addr:port> <count>: from one connected UDP socket, send
//!                `count` datagrams of 100 bytes, each after the previous
//!                one's echo; print `local ip:port`.
//!   udp-hold     <addr:port> <count> <hold_ms> <src,src…>: open `count`
//!                UDP sockets (raising RLIMIT_NOFILE), bound in turn to each
//!                source address (one address has too few ports), send one
//!                byte from each, hold them all for hold_ms, close them;
//!                print how many were opened (benchmarks: a full flow table).
use std::{
    io::{Error, ErrorKind, Read, Result, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

pub const MODES: [&str; 6] = [
    "upload",
    "sink-exact",
    "rst-listen",
    "udp-echo",
    "udp-exchange",
    "udp-hold",
];

fn number(text: &str, what: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| Error::new(ErrorKind::InvalidInput, what.to_owned()))
}

pub fn run(mode: &str, args: &[String]) -> Result<()> {
    let addr: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "addr:port"))?;
    match (mode, &args[1..]) {
        ("upload", [bytes]) => upload(addr, number(bytes, "bytes")?, 0),
        ("upload", [bytes, pause]) => {
            upload(addr, number(bytes, "bytes")?, number(pause, "pause_ms")?)
        }
        ("sink-exact", [bytes]) => sink_exact(addr, number(bytes, "bytes")?),
        ("rst-listen", []) => rst_listen(addr),
        ("udp-echo", []) => udp_echo(addr),
        ("udp-exchange", [count]) => udp_exchange(addr, number(count, "count")?),
        ("udp-hold", [count, hold, sources]) => {
            let sources = sources
                .split(',')
                .map(|s| s.parse())
                .collect::<std::result::Result<Vec<std::net::IpAddr>, _>>()
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "sources"))?;
            udp_hold(
                addr,
                number(count, "count")?,
                number(hold, "hold_ms")?,
                &sources,
            )
        }
        _ => Err(Error::new(ErrorKind::InvalidInput, "arguments")),
    }
}

fn upload(addr: SocketAddr, bytes: u64, pause_ms: u64) -> Result<()> {
    let start = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    println!("local {}", stream.local_addr()?);
    let parts = if pause_ms > 0 { 6 } else { 1 };
    let chunk = vec![0x5au8; 64 * 1024];
    let mut outcome = Ok(());
    'parts: for part in 0..parts {
        let mut left = bytes / parts + if part == parts - 1 { bytes % parts } else { 0 };
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if let Err(err) = stream.write_all(&chunk[..n]) {
                outcome = Err(err);
                break 'parts;
            }
            left -= n as u64;
        }
        if pause_ms > 0 && part + 1 < parts {
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
    }
    if outcome.is_ok() {
        outcome = stream.shutdown(Shutdown::Write);
    }
    let mut buf = [0u8; 4096];
    while outcome.is_ok() {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => outcome = Err(err),
        }
    }
    if let Err(err) = outcome {
        println!("err {}", err.raw_os_error().unwrap_or(-1));
    }
    drop(stream);
    println!("elapsed {}", start.elapsed().as_nanos());
    Ok(())
}

fn sink_exact(addr: SocketAddr, bytes: u64) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("listening");
    let mut buf = vec![0u8; 256 * 1024];
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut got = 0u64;
        while got < bytes {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
    }
    Ok(())
}

fn rst_listen(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("listening");
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket and a correctly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::last_os_error());
        }
    }
    Ok(())
}

fn udp_echo(addr: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind(addr)?;
    println!("listening");
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..n], peer)?;
    }
}

fn udp_exchange(addr: SocketAddr, count: u64) -> Result<()> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    println!("local {}", socket.local_addr()?);
    let mut buf = [0u8; 2048];
    for _ in 0..count {
        socket.send(&[0x42u8; 100])?;
        socket.recv(&mut buf)?;
    }
    Ok(())
}

fn udp_hold(
    addr: SocketAddr,
    count: u64,
    hold_ms: u64,
    sources: &[std::net::IpAddr],
) -> Result<()> {
    // Up to the hard limit (raising that needs CAP_SYS_RESOURCE): callers
    // wanting more run several processes.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(Error::last_os_error());
    }
    limit.rlim_cur = (count + 64).min(limit.rlim_max);
    // SAFETY: a valid rlimit value, within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(Error::last_os_error());
    }
    let mut sockets = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let source = sources.get(i % sources.len().max(1)).copied();
        let bind = SocketAddr::new(source.unwrap_or([0, 0, 0, 0].into()), 0);
        let opened = UdpSocket::bind(bind).and_then(|s| s.send_to(&[1], addr).map(|_| s));
        match opened {
            Ok(socket) => sockets.push(socket),
            Err(err) => {
                eprintln!("socket {i}: {err}");
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(hold_ms));
    println!("{}", sockets.len());
    Ok(())
}
