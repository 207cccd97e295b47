//! egret-probe: makes exactly one kind of outbound attempt and exits at once,
//! so end-to-end tests can check what the agent reports for its pid. Its own
//! bin crate; the test kit builds it next to the agent.
//!
//! Usage: egret-probe <mode> <addr:port>
//!   tcp            TCP connect (IPv4 or IPv6 by address), non-blocking
//!                  then polled for 500 ms (connect returns EINPROGRESS)
//!   tcp-blocking   TCP connect on a blocking socket, no timeout (connect
//!                  returns the handshake's result)
//!   udp-connect    UDP connect, then send one datagram
//!   udp-sendto     UDP sendto without connect
//!   mapped-tcp     TCP connect from an AF_INET6 socket to ::ffff:<ipv4>
//!   uring-connect  TCP connect submitted through io_uring
//!   connect-loop   <addr:port> <count>: connect+close in a loop on one thread,
//!                  print connects/s (benchmarks). Port 0 listens on that
//!                  address and accepts each connection on the same thread.
//!   connect-timed  <addr:port> <count> <rate>: `count` TCP connects, one
//!                  every 1/rate seconds, to consecutive ports from `port`
//!                  up; prints `port realtime_ns` per connect (the
//!                  CLOCK_REALTIME just before connect) once all are done
//!                  (benchmarks: alert latency). Refusals are expected.
//!   report-<mode>  tcp, udp-sendto, icmp-raw or icmp-ping: one attempt,
//!                  prints `ok` or `err <errno>` (quarantine tests check
//!                  for EPERM); exits 0 either way.
//!   listen         accept TCP connections on <addr:port> until killed.
//!   raw-icmp       <addr> [count]: `count` (default 1) ICMP/ICMPv6 echo
//!                  requests from one raw socket; prints `sent N`.
//!   ping-sendto    <addr> [count]: the same from an unconnected ICMP "ping"
//!                  socket (SOCK_DGRAM; needs net.ipv4.ping_group_range).
//!   packet-socket  create an AF_PACKET socket (ETH_P_ALL) and close it.
//!   tcp-sink       <addr:port>: accept TCP connections and read each to EOF,
//!                  until killed (benchmarks).
//!   tcp-bulk       <addr:port> <millis>: write 128 KiB chunks to one TCP
//!                  connection for `millis`, print bytes/s (benchmarks).
//!   memfd-exec     <addr:port>: copy this binary into a memfd and fexecve
//!                  it (argv[0] `sshd`), which then makes a `tcp` attempt
//!                  (fileless execution, issue 13).
//!   deleted-exec   <addr:port>: copy this binary to a file, open it,
//!                  delete it and execveat the descriptor, then `tcp`.
//!   prctl-rename   <name> <addr:port>: PR_SET_NAME to <name>, then `tcp`.
//!   rm-self-tcp    <addr:port>: delete the file this process runs from,
//!                  `tcp`, then stay 2 s (an implant that cleans up after
//!                  starting and keeps running).
//!   bulk           <addr> <mib>: listen on <addr> (port 0: any), stream
//!                  <mib> MiB to itself over one TCP connection (a reader
//!                  thread discards), print MiB/s (benchmarks: what a
//!                  per-packet egress program costs a bulk flow).
//!   bulk-for       <addr> <millis>: `bulk` for a fixed time, print MiB/s.
//!   connect-for    <addr> <millis>: `connect-loop` with port 0 for a fixed
//!                  time, print connects/s (two runs started together share
//!                  the machine for the same interval).
//!   connect-out-for <addr> <millis> <procs>: `connect-for`, but the
//!                  listener is made before this process joins a cgroup by
//!                  writing its pid to <procs> (that cgroup's cgroup.procs,
//!                  e.g. an inherited /dev/fd/N: `ip netns exec` hides the
//!                  cgroup mount): accepted sockets belong to the
//!                  listener's cgroup, so only the connecting end is in the
//!                  new one, as with a peer on another host (benchmarks).
//!   connect-alternate <addr> <blocks> <block_ms> <procs A> <procs B> <ends>:
//!                  the `connect-for` loop in blocks of <block_ms>,
//!                  alternating between two cgroups (joined through their
//!                  cgroup.procs files, as in `connect-out-for`), ABBA
//!                  order; <ends> `out`: one listener, made before joining
//!                  either (accepted sockets unmonitored); `both`: one
//!                  listener made in each. Prints A's and B's connects/s
//!                  and the median over block pairs of A/B (benchmarks:
//!                  two settings compared on one core, interleaved finely
//!                  enough that the machine's drift cancels).
//!   udp-repeat     <addr:port> <count>: one connected UDP socket sending
//!                  `count` datagrams with `sendto` its peer; prints sends/s.
//!   resolve-connect, resolve, dns-query, dns-raw: DNS modes, see dns.rs.
mod dns;
mod flows;
mod load;

use load::{
    bulk, bulk_for, connect_alternate, connect_for, connect_loop, connect_out_for, connect_timed,
    udp_repeat,
};

use std::{
    io::{Error, ErrorKind, Result},
    net::{IpAddr, SocketAddr, SocketAddrV6, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1..) {
        Some([mode, rest @ ..]) if flows::MODES.contains(&mode.as_str()) => flows::run(mode, rest),
        Some([mode, addr]) if mode.starts_with("report-") => parse(addr).and_then(|addr| {
            let outcome = report(&mode["report-".len()..], addr);
            match outcome {
                Ok(()) => println!("ok"),
                Err(err) if err.kind() == ErrorKind::InvalidInput => return Err(err),
                Err(err) => println!("err {}", err.raw_os_error().unwrap_or(-1)),
            }
            Ok(())
        }),
        Some([mode]) if mode == "packet-socket" => packet_socket(),
        Some([mode, addr]) if mode == "raw-icmp" || mode == "ping-sendto" => {
            icmp_mode(mode, addr, "1")
        }
        Some([mode, addr, count]) if mode == "raw-icmp" || mode == "ping-sendto" => {
            icmp_mode(mode, addr, count)
        }
        Some([mode, addr]) if mode == "listen" => parse(addr).and_then(listen),
        Some([mode, addr]) if mode == "tcp-sink" => parse(addr).and_then(tcp_sink),
        Some([mode, addr, millis]) if mode == "tcp-bulk" => parse(addr).and_then(|addr| {
            let millis = millis
                .parse()
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "millis"))?;
            tcp_bulk(addr, Duration::from_millis(millis))
        }),
        Some([mode, addr]) if mode == "memfd-exec" => parse(addr).and_then(memfd_exec),
        Some([mode, addr]) if mode == "deleted-exec" => parse(addr).and_then(deleted_exec),
        Some([mode, addr]) if mode == "rm-self-tcp" => parse(addr).and_then(|addr| {
            std::fs::remove_file(std::fs::read_link("/proc/self/exe")?)?;
            let result = run("tcp", addr);
            std::thread::sleep(Duration::from_secs(2));
            result
        }),
        Some([mode, name, addr]) if mode == "prctl-rename" => parse(addr).and_then(|addr| {
            let name = std::ffi::CString::new(name.as_str())
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "name"))?;
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of any length
            // (the kernel keeps 15 bytes).
            if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } != 0 {
                return Err(Error::last_os_error());
            }
            run("tcp", addr)
        }),
        Some([mode, rest @ ..]) if dns::MODES.contains(&mode.as_str()) => dns::run(mode, rest),
        Some([mode, addr]) => parse(addr).and_then(|addr| run(mode, addr)),
        Some([mode, addr, mib]) if mode == "bulk" => parse(addr).and_then(|addr| {
            let mib = mib
                .parse()
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "MiB"))?;
            bulk(addr, mib)
        }),
        Some([mode, addr, count]) if mode == "connect-loop" => parse(addr).and_then(|addr| {
            let count = count
                .parse()
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "count"))?;
            connect_loop(addr, count)
        }),
        Some([mode, addr, millis]) if mode == "bulk-for" || mode == "connect-for" => parse(addr)
            .and_then(|addr| {
                let run = millis
                    .parse()
                    .map(Duration::from_millis)
                    .map_err(|_| Error::new(ErrorKind::InvalidInput, "milliseconds"))?;
                if mode == "bulk-for" {
                    bulk_for(addr, run)
                } else {
                    connect_for(addr, run)
                }
            }),
        Some([mode, addr, millis, procs]) if mode == "connect-out-for" => {
            parse(addr).and_then(|addr| {
                let run = millis
                    .parse()
                    .map(Duration::from_millis)
                    .map_err(|_| Error::new(ErrorKind::InvalidInput, "milliseconds"))?;
                connect_out_for(addr, run, std::path::Path::new(procs))
            })
        }
        Some([mode, addr, blocks, block_ms, a, b, ends]) if mode == "connect-alternate" => {
            parse(addr).and_then(|addr| {
                let number = |text: &str, what: &str| {
                    text.parse::<u64>()
                        .map_err(|_| Error::new(ErrorKind::InvalidInput, what.to_owned()))
                };
                let both = match ends.as_str() {
                    "out" => false,
                    "both" => true,
                    _ => return Err(Error::new(ErrorKind::InvalidInput, "ends: out or both")),
                };
                connect_alternate(
                    addr,
                    number(blocks, "blocks")?,
                    Duration::from_millis(number(block_ms, "block_ms")?),
                    [std::path::Path::new(a), std::path::Path::new(b)],
                    both,
                )
            })
        }
        Some([mode, addr, count]) if mode == "udp-repeat" => parse(addr).and_then(|addr| {
            let count = count
                .parse()
                .map_err(|_| Error::new(ErrorKind::InvalidInput, "count"))?;
            udp_repeat(addr, count)
        }),
        Some([mode, addr, count, rate]) if mode == "connect-timed" => {
            parse(addr).and_then(|addr| {
                let count = count
                    .parse()
                    .map_err(|_| Error::new(ErrorKind::InvalidInput, "count"))?;
                let rate = rate
                    .parse::<f64>()
                    .ok()
                    .filter(|r| *r > 0.0)
                    .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "rate"))?;
                connect_timed(addr, count, rate)
            })
        }
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            "usage: egret-probe <mode> <addr:port>",
        )),
    };
    match result {
        // Refused / unreachable are expected: the attempt is what matters.
        Ok(()) => std::process::exit(0),
        Err(err) if err.kind() == ErrorKind::InvalidInput => {
            eprintln!("egret-probe: {err}");
            std::process::exit(2)
        }
        Err(_) => std::process::exit(0),
    }
}

/// An address without a port, as ping takes it.
fn parse_ip(addr: &str) -> Result<IpAddr> {
    addr.parse()
        .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("bad address {addr}")))
}

fn icmp_mode(mode: &str, addr: &str, count: &str) -> Result<()> {
    let ip = parse_ip(addr)?;
    let count: u32 = count
        .parse()
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "count"))?;
    let kind = if mode == "raw-icmp" {
        libc::SOCK_RAW
    } else {
        libc::SOCK_DGRAM
    };
    let sent = icmp_echoes(SocketAddr::new(ip, 0), kind, count)?;
    println!("sent {sent}");
    Ok(())
}

fn packet_socket() -> Result<()> {
    const ETH_P_ALL: u16 = 0x0003;
    // SAFETY: plain socket(2); closed right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    println!("ok");
    Ok(())
}

/// Copies this binary into `fd`.
fn copy_self(fd: libc::c_int) -> Result<()> {
    use std::os::fd::FromRawFd;
    let image = std::fs::read("/proc/self/exe")?;
    // SAFETY: `fd` is ours and open; ManuallyDrop keeps it open afterwards.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    std::io::Write::write_all(&mut &*file, &image)
}

/// Execs the open file `fd` (fexecve) as `argv0 tcp <addr>`.
fn exec_fd(fd: libc::c_int, argv0: &str, addr: SocketAddr) -> Result<()> {
    use std::ffi::CString;
    let args = [argv0.to_owned(), "tcp".to_owned(), addr.to_string()];
    let args: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).map_err(|_| Error::from(ErrorKind::InvalidInput)))
        .collect::<Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: valid fd, NUL-terminated argv/envp arrays; returns only on error.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Error::last_os_error())
}

fn memfd_exec(addr: SocketAddr) -> Result<()> {
    // SAFETY: NUL-terminated name; no flags (the fd must survive the exec).
    let fd = unsafe { libc::memfd_create(c"payload".as_ptr(), 0) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    copy_self(fd)?;
    exec_fd(fd, "sshd", addr)
}

fn deleted_exec(addr: SocketAddr) -> Result<()> {
    use std::os::{fd::IntoRawFd, unix::fs::PermissionsExt};
    let path = std::env::temp_dir().join(format!("egret-probe-deleted-{}", std::process::id()));
    std::fs::write(&path, std::fs::read("/proc/self/exe")?)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    // Read-only: a file open for writing cannot be executed (ETXTBSY).
    let fd = std::fs::File::open(&path)?.into_raw_fd();
    std::fs::remove_file(&path)?;
    exec_fd(fd, "egret-probe", addr)
}

fn parse(addr: &str) -> Result<SocketAddr> {
    addr.parse()
        .map_err(|_| Error::new(ErrorKind::InvalidInput, format!("bad address {addr}")))
}

fn run(mode: &str, addr: SocketAddr) -> Result<()> {
    let timeout = Duration::from_millis(500);
    match mode {
        "tcp" => TcpStream::connect_timeout(&addr, timeout).map(drop),
        "tcp-blocking" => TcpStream::connect(addr).map(drop),
        "udp-connect" => {
            let socket = UdpSocket::bind(unspecified(&addr))?;
            socket.connect(addr)?;
            socket.send(b"egret").map(drop)
        }
        "udp-sendto" => {
            let socket = UdpSocket::bind(unspecified(&addr))?;
            socket.send_to(b"egret", addr).map(drop)
        }
        "mapped-tcp" => {
            let IpAddr::V4(v4) = addr.ip() else {
                return Err(Error::new(ErrorKind::InvalidInput, "mapped-tcp needs IPv4"));
            };
            let mapped = SocketAddr::V6(SocketAddrV6::new(v4.to_ipv6_mapped(), addr.port(), 0, 0));
            TcpStream::connect_timeout(&mapped, timeout).map(drop)
        }
        "uring-connect" => uring_connect(addr),
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("unknown mode {other}"),
        )),
    }
}

fn report(mode: &str, addr: SocketAddr) -> Result<()> {
    match mode {
        "tcp" => TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(drop),
        "udp-sendto" => run("udp-sendto", addr),
        "icmp-raw" => icmp_echo(addr, libc::SOCK_RAW),
        "icmp-ping" => icmp_echo(addr, libc::SOCK_DGRAM),
        other => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("unknown report mode {other}"),
        )),
    }
}

/// One ICMP echo request (IPv4) from a raw or a ping socket.
fn icmp_echo(addr: SocketAddr, kind: libc::c_int) -> Result<()> {
    if !addr.is_ipv4() {
        return Err(Error::new(ErrorKind::InvalidInput, "icmp needs IPv4"));
    }
    icmp_echoes(addr, kind, 1).map(drop)
}

/// `count` echo requests to `addr` from one raw or ping socket (ICMPv6 for
/// an IPv6 address; the kernel fills in ICMPv6 checksums). Sends that fail
/// for want of a neighbour still left the socket, which is what is tested.
fn icmp_echoes(addr: SocketAddr, kind: libc::c_int, count: u32) -> Result<u32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (family, protocol, echo) = match addr {
        SocketAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
        SocketAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let (storage, len) = sockaddr(&addr);
    let mut sent = 0;
    for seq in 0..count {
        // type, code 0, checksum, id, sequence.
        let seq = (seq as u16).to_be_bytes();
        let mut packet = [echo, 0, 0, 0, 0x45, 0x67, seq[0], seq[1]];
        if family == libc::AF_INET {
            let sum = packet
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum::<u32>();
            let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        // SAFETY: valid fd, buffer and sockaddr for the call's duration.
        let result = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const storage).cast(),
                len,
            )
        };
        if result < 0 {
            let err = Error::last_os_error();
            // Unresolved neighbours report EHOSTUNREACH for queued packets.
            if sent == 0 && err.raw_os_error() != Some(libc::EHOSTUNREACH) {
                return Err(err);
            }
        } else {
            sent += 1;
        }
    }
    Ok(sent)
}

fn tcp_sink(addr: SocketAddr) -> Result<()> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind(addr)?;
    println!("listening");
    let mut buf = vec![0u8; 256 * 1024];
    for stream in listener.incoming() {
        let mut stream = stream?;
        while stream.read(&mut buf)? > 0 {}
    }
    Ok(())
}

fn tcp_bulk(addr: SocketAddr, run: Duration) -> Result<()> {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    let chunk = vec![0x5au8; 128 * 1024];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < run {
        stream.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    println!("{:.0}", bytes as f64 / start.elapsed().as_secs_f64());
    Ok(())
}

fn listen(addr: SocketAddr) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    println!("listening");
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}

fn unspecified(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    }
}

fn uring_connect(addr: SocketAddr) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use io_uring::{IoUring, opcode, types};

    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let (storage, len) = sockaddr(&addr);
    let mut ring = IoUring::new(4)?;
    let connect = opcode::Connect::new(
        types::Fd(socket.as_raw_fd()),
        (&raw const storage).cast(),
        len,
    )
    .build();
    // SAFETY: `storage` and `socket` outlive the submission, which we wait for.
    unsafe { ring.submission().push(&connect) }
        .map_err(|_| Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let result = ring.completion().next().map(|cqe| cqe.result());
    match result {
        Some(res) if res < 0 => Err(Error::from_raw_os_error(-res)),
        Some(_) => Ok(()),
        None => Err(Error::other("no completion")),
    }
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
