//! `RecordKind::Dns`: a DNS message a socket sent (query) or received
//! (answer), copied by the cgroup_skb DNS programs, parsed here with
//! `simple-dns`. The message is hostile input: any byte string gives a
//! [`DnsRecord`] whose `message` is either parsed or a [`Malformed`]
//! reason, never a panic (fuzzed: `agent/fuzz`, target `dns_message`).
//! The parser itself is `dns_message.rs`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use egret_common::{
    AF_INET, AF_INET6, DNS_DIR_EGRESS, DNS_FLAG_TCP, DNS_PAYLOAD_BYTES, DnsEvent, Hook,
};

pub use super::dns_message::*;
use super::{DecodeError, read_record};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsDirection {
    /// Sent by the local socket.
    Query,
    /// Received by the local socket.
    Answer,
}

impl DnsDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsDirection::Query => "query",
            DnsDirection::Answer => "answer",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRecord {
    pub hook: Hook,
    pub direction: DnsDirection,
    pub tcp: bool,
    pub mono_ns: u64,
    pub wall_ns: u64,
    pub cgroup_id: u64,
    pub socket_cookie: u64,
    pub local: SocketAddr,
    /// The resolver (or, for a server on the node, its client).
    pub remote: SocketAddr,
    /// The message's length on the wire.
    pub msg_len: u16,
    pub message: Result<DnsMessage, Malformed>,
}

fn addr(family: u8, raw: [u8; 16], port: u16) -> Result<SocketAddr, DecodeError> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(raw)).to_canonical(),
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    Ok(SocketAddr::new(ip, port))
}

pub(super) fn decode(record: &[u8], wall_offset_ns: i64) -> Result<DnsRecord, DecodeError> {
    let raw: DnsEvent = read_record(record)?;
    let hook = match Hook::from_u8(raw.hook) {
        Some(hook @ (Hook::DnsQuery | Hook::DnsAnswer)) => hook,
        _ => return Err(DecodeError::UnknownHook(raw.hook)),
    };
    let direction = if raw.direction == DNS_DIR_EGRESS {
        DnsDirection::Query
    } else {
        DnsDirection::Answer
    };
    let len = usize::from(raw.len).min(DNS_PAYLOAD_BYTES);
    let payload = &raw.payload[..len];
    let cut = usize::from(raw.msg_len) > len;
    Ok(DnsRecord {
        hook,
        direction,
        tcp: raw.flags & DNS_FLAG_TCP != 0,
        mono_ns: raw.mono_ns,
        wall_ns: raw.mono_ns.saturating_add_signed(wall_offset_ns),
        cgroup_id: raw.cgroup_id,
        socket_cookie: raw.socket_cookie,
        local: addr(raw.family, raw.laddr, raw.lport)?,
        remote: addr(raw.family, raw.raddr, raw.rport)?,
        msg_len: raw.msg_len,
        message: parse(payload, cut),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use simple_dns::{CLASS, Name, Packet, Question, ResourceRecord, TYPE, rdata, rdata::RData};

    use super::*;

    /// A wire-format answer for `qname` with A records and a CNAME.
    pub(crate) fn answer(
        qname: &str,
        cname: Option<&str>,
        addrs: &[Ipv4Addr],
        ttl: u32,
    ) -> Vec<u8> {
        let mut packet = Packet::new_reply(7);
        packet.questions.push(Question::new(
            Name::new_unchecked(qname),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let target = cname.unwrap_or(qname);
        if let Some(c) = cname {
            packet.answers.push(ResourceRecord::new(
                Name::new_unchecked(qname),
                CLASS::IN,
                ttl,
                RData::CNAME(rdata::CNAME(Name::new_unchecked(c))),
            ));
        }
        for a in addrs {
            packet.answers.push(ResourceRecord::new(
                Name::new_unchecked(target),
                CLASS::IN,
                ttl,
                RData::A(rdata::A {
                    address: u32::from(*a),
                }),
            ));
        }
        packet.build_bytes_vec().unwrap()
    }

    pub(crate) fn raw(direction: u8, payload: &[u8]) -> DnsEvent {
        let mut ev = DnsEvent {
            kind: egret_common::RecordKind::Dns as u8,
            hook: if direction == DNS_DIR_EGRESS {
                Hook::DnsQuery as u8
            } else {
                Hook::DnsAnswer as u8
            },
            direction,
            family: AF_INET,
            flags: 0,
            _pad0: [0; 3],
            lport: 40000,
            rport: 53,
            len: payload.len().min(DNS_PAYLOAD_BYTES) as u16,
            msg_len: payload.len() as u16,
            mono_ns: 10,
            cgroup_id: 5,
            socket_cookie: 9,
            laddr: [0; 16],
            raddr: [0; 16],
            payload: [0; DNS_PAYLOAD_BYTES],
        };
        ev.laddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.raddr[..4].copy_from_slice(&[10, 0, 0, 53]);
        let n = usize::from(ev.len);
        ev.payload[..n].copy_from_slice(&payload[..n]);
        ev
    }

    pub(crate) fn bytes(ev: &DnsEvent) -> Vec<u8> {
        // SAFETY: repr(C) record with explicit padding.
        unsafe {
            std::slice::from_raw_parts((ev as *const DnsEvent).cast::<u8>(), size_of::<DnsEvent>())
        }
        .to_vec()
    }

    #[test]
    fn parses_an_answer_with_a_cname_chain() {
        let msg = answer(
            "WWW.Shop.example",
            Some("cdn.example"),
            &[Ipv4Addr::new(203, 0, 113, 5)],
            300,
        );
        let rec = decode(&bytes(&raw(egret_common::DNS_DIR_INGRESS, &msg)), 0).unwrap();
        assert_eq!(rec.direction, DnsDirection::Answer);
        assert_eq!(rec.remote, "10.0.0.53:53".parse().unwrap());
        let m = rec.message.unwrap();
        assert_eq!(m.qname, "www.shop.example");
        assert!(m.response);
        assert_eq!((m.qtype, m.rcode), (1, 0));
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[0].data, AnswerData::Cname("cdn.example".into()));
        assert_eq!(
            m.answers[1].data,
            AnswerData::Addr("203.0.113.5".parse().unwrap())
        );
    }

    #[test]
    fn hostile_messages_are_reasons_not_panics() {
        let msg = answer("a.example", None, &[Ipv4Addr::new(203, 0, 113, 1)], 60);
        for len in 0..msg.len() {
            let got = parse(&msg[..len], true);
            assert!(got.is_err() || len == msg.len(), "{len}: {got:?}");
        }
        assert_eq!(
            parse(&msg[..msg.len() - 3], true),
            Err(Malformed::Truncated)
        );
        assert_eq!(parse(b"\xff\xff\xff", false), Err(Malformed::Invalid));
        // Header only: twelve bytes, no question.
        assert_eq!(parse(&[0u8; 12], false), Err(Malformed::NoQuestion));
        // Compression pointer loop.
        let mut looped = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(parse(&looped, false).is_err());
        // Every byte value in every header position never panics.
        for b in 0..=255u8 {
            let mut m = msg.clone();
            for i in 0..m.len() {
                let keep = m[i];
                m[i] = b;
                let _ = parse(&m, false);
                m[i] = keep;
            }
        }
    }

    #[test]
    fn refuses_hostile_records() {
        let good = bytes(&raw(DNS_DIR_EGRESS, b"xx"));
        for len in [0, 1, 10, good.len() - 1] {
            assert!(decode(&good[..len], 0).is_err());
        }
        let mut bad = raw(DNS_DIR_EGRESS, b"xx");
        bad.hook = Hook::Connect4 as u8;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownHook(0)));
        let mut bad = raw(DNS_DIR_EGRESS, b"xx");
        bad.family = 3;
        assert_eq!(decode(&bytes(&bad), 0), Err(DecodeError::UnknownFamily(3)));
        let mut long = raw(DNS_DIR_EGRESS, b"xx");
        long.len = u16::MAX;
        assert!(decode(&bytes(&long), 0).is_ok());
    }
}
