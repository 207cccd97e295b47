//! The DNS message parser: bytes (hostile) to the parts Egret uses,
//! with `simple-dns`, never panicking. Only std and simple-dns, so the
//! fuzz target (`agent/fuzz`, `dns_message`) compiles this very file.
//!
//! Why simple-dns: no dependencies, zero-copy parsing of a borrowed
//! buffer, maintained, and it refuses (rather than guesses at) truncated
//! sections; hickory-proto is a full resolver stack we do not need.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::{Packet, PacketFlag, rdata::RData};

/// Most answers kept per message; the rest are counted as cut.
pub const MAX_ANSWERS: usize = 32;

/// Why a DNS message was not parsed (`egret_dns_malformed_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// The copy was shorter than the message (longer than the kernel's
    /// copy, or a TCP message spread over segments) and the cut fell
    /// inside a section.
    Truncated,
    /// Not a DNS message: the parser refused it.
    Invalid,
    /// A well-formed message without a question (nothing to report).
    NoQuestion,
}

impl Malformed {
    pub const ALL: [Malformed; 3] = [
        Malformed::Truncated,
        Malformed::Invalid,
        Malformed::NoQuestion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Truncated => "truncated",
            Malformed::Invalid => "invalid",
            Malformed::NoQuestion => "no_question",
        }
    }
}

/// One answer record that names an address or an alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnswerData {
    Addr(IpAddr),
    Cname(String),
    /// Another record type (TXT, MX, ...), by number.
    Other(u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub ttl: u32,
    pub data: AnswerData,
}

/// The parts of a DNS message rules and the names cache use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub response: bool,
    /// The response code (0 NOERROR, 3 NXDOMAIN, ...); 0 for queries.
    pub rcode: u8,
    /// The first question's name, lower case, no trailing dot.
    pub qname: String,
    /// The first question's type number (1 A, 16 TXT, 28 AAAA, 10 NULL).
    pub qtype: u16,
    pub answers: Vec<Answer>,
}

/// Parses a DNS message; `cut` says the bytes are a prefix of it.
pub fn parse(bytes: &[u8], cut: bool) -> Result<DnsMessage, Malformed> {
    let packet = match Packet::parse(bytes) {
        Ok(packet) => packet,
        Err(_) if cut => return Err(Malformed::Truncated),
        Err(_) => return Err(Malformed::Invalid),
    };
    let question = packet.questions.first().ok_or(Malformed::NoQuestion)?;
    let response = packet.has_flags(PacketFlag::RESPONSE);
    let answers = packet
        .answers
        .iter()
        .take(MAX_ANSWERS)
        .map(|rr| Answer {
            name: name_text(&rr.name.to_string()),
            ttl: rr.ttl,
            data: match &rr.rdata {
                RData::A(a) => AnswerData::Addr(IpAddr::V4(Ipv4Addr::from(a.address))),
                RData::AAAA(a) => AnswerData::Addr(IpAddr::V6(Ipv6Addr::from(a.address))),
                RData::CNAME(c) => AnswerData::Cname(name_text(&c.0.to_string())),
                other => AnswerData::Other(u16::from(other.type_code())),
            },
        })
        .collect();
    Ok(DnsMessage {
        id: packet.id(),
        response,
        rcode: if response { packet.rcode() as u8 } else { 0 },
        qname: name_text(&question.qname.to_string()),
        qtype: u16::from(question.qtype),
        answers,
    })
}

/// Lower case without a trailing dot: names compare case-insensitively.
fn name_text(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Falco-style type name for `evt.arg`-like fields (`A`, `TXT`, ...).
pub fn qtype_name(qtype: u16) -> &'static str {
    match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        10 => "NULL",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => "OTHER",
    }
}

/// Response code names as in RFC 1035 / 6895.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

/// Measures of a query name that tunnels give away.
#[derive(Debug, PartialEq, Eq)]
pub struct NameShape {
    pub parent: String,
    pub longest_label: u64,
    pub entropy_x100: u64,
}

impl NameShape {
    pub fn of(qname: &str) -> NameShape {
        let labels: Vec<&str> = qname.split('.').filter(|l| !l.is_empty()).collect();
        let longest_label = labels.iter().map(|l| l.len()).max().unwrap_or(0) as u64;
        let (sub, parent) = if labels.len() > 2 {
            (
                &labels[..labels.len() - 2],
                labels[labels.len() - 2..].join("."),
            )
        } else {
            (&labels[..0], labels.join("."))
        };
        NameShape {
            parent,
            longest_label,
            entropy_x100: entropy_x100(sub.iter().flat_map(|l| l.bytes())),
        }
    }
}

fn entropy_x100(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for b in bytes {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0;
    }
    let n = f64::from(n);
    let h: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum();
    (h * 100.0).round() as u64
}
