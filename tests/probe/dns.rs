//! DNS modes (issue 14): resolve names through the system resolver (in a
//! test namespace, `/etc/netns/NAME/resolv.conf` points it at the test's
//! DNS server), and send hand-made or raw DNS messages.
//!
//!   resolve-connect <name> <port>: getaddrinfo, then one TCP connect to
//!                   the first IPv4 address (1 s timeout); prints the address.
//!   resolve         <name>...: getaddrinfo each name (failures ignored);
//!                   prints `resolved N`.
//!   dns-query       <server:port> <qtype> <name>...: one UDP query per
//!                   name (qtype a number: 16 TXT, 10 NULL), waits up to
//!                   200 ms for each answer; prints `answered N`.
//!   dns-query-tcp   <server:port> <qtype> <name>: the same over TCP
//!                   (2-byte length prefix); prints `answered N`.
//!   dns-raw         <server:port> <hex>: send the bytes as one datagram
//!                   (malformed and truncated messages).
use std::{
    io::{Error, ErrorKind, Result},
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    time::Duration,
};

pub const MODES: [&str; 5] = [
    "resolve-connect",
    "resolve",
    "dns-query",
    "dns-query-tcp",
    "dns-raw",
];

fn invalid(what: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, what.to_string())
}

pub fn run(mode: &str, args: &[String]) -> Result<()> {
    match (mode, args) {
        ("resolve-connect", [name, port]) => {
            let port: u16 = port.parse().map_err(|_| invalid("port"))?;
            let addr = (name.as_str(), port)
                .to_socket_addrs()?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| Error::other("no IPv4 address"))?;
            println!("{addr}");
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(drop)
        }
        ("resolve", names) if !names.is_empty() => {
            let resolved = names
                .iter()
                .filter(|n| (n.as_str(), 80).to_socket_addrs().is_ok())
                .count();
            println!("resolved {resolved}");
            Ok(())
        }
        ("dns-query", [server, qtype, names @ ..]) if !names.is_empty() => {
            let server: SocketAddr = server.parse().map_err(|_| invalid("server"))?;
            let qtype: u16 = qtype.parse().map_err(|_| invalid("qtype"))?;
            let socket = UdpSocket::bind(if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut answered = 0;
            for (i, name) in names.iter().enumerate() {
                socket.send_to(&query(i as u16, name, qtype)?, server)?;
                let mut buf = [0u8; 1500];
                if socket.recv_from(&mut buf).is_ok() {
                    answered += 1;
                }
            }
            println!("answered {answered}");
            Ok(())
        }
        ("dns-query-tcp", [server, qtype, name]) => {
            use std::io::{Read, Write};
            let server: SocketAddr = server.parse().map_err(|_| invalid("server"))?;
            let qtype: u16 = qtype.parse().map_err(|_| invalid("qtype"))?;
            let message = query(1, name, qtype)?;
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(1))?;
            stream.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut framed = (message.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&message);
            stream.write_all(&framed)?;
            let mut len = [0u8; 2];
            let answered = usize::from(stream.read_exact(&mut len).is_ok());
            println!("answered {answered}");
            Ok(())
        }
        ("dns-raw", [server, hex]) => {
            let server: SocketAddr = server.parse().map_err(|_| invalid("server"))?;
            let bytes = unhex(hex).ok_or_else(|| invalid("hex"))?;
            let socket = UdpSocket::bind(if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            socket.send_to(&bytes, server).map(drop)
        }
        _ => Err(invalid("usage: see tests/probe/dns.rs")),
    }
}

/// A standard recursive query for `name` (RFC 1035 4.1).
fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or_else(|| invalid("label"))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    Ok(out)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
