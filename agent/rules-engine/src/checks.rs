//! Turns one `field op value(s)` into a typed comparison, checking that the
//! operator suits the field and that every value parses for its type.
use ipnet::IpNet;

use crate::FieldId;
use crate::ast::Op;
use crate::eval::{Cmp, LabelSet};
use crate::evt_types;
use crate::fields::{Field, Kind, Src};
use crate::matchers::{Glob, PathSet, StrSet, U64Set};
use crate::netmatch::NetMatch;
use crate::netset::parse_net;

/// Regexes come from rule files; cap what one may cost to compile and hold.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One right-hand value and the index of where it was written, so that an
/// error can point at it.
pub(crate) struct Val<'v> {
    pub text: &'v str,
    pub at: usize,
}

/// An error and, when it concerns one value, that value's index.
pub(crate) type CheckError = (Option<usize>, String);

/// The hook for UDP cannot tell sendto from sendmsg or sendmmsg, and reports
/// `sendto`; rules naming the others mean the same sends.
fn canonical_evt_type(value: &str) -> &str {
    match value {
        "sendmsg" | "sendmmsg" => "sendto",
        other => other,
    }
}

/// Service names a port field accepts, as Falco resolves them from the
/// services database (`fd.sport = https`). A fixed table: what a rule means
/// must not depend on the node's /etc/services.
const SERVICES: &[(&str, u64)] = &[
    ("amqp", 5672),
    ("bgp", 179),
    ("dns", 53),
    ("domain", 53),
    ("ftp", 21),
    ("ftp-data", 20),
    ("ftps", 990),
    ("git", 9418),
    ("http", 80),
    ("http-alt", 8080),
    ("https", 443),
    ("imap", 143),
    ("imap2", 143),
    ("imaps", 993),
    ("irc", 194),
    ("ircs-u", 6697),
    ("kerberos", 88),
    ("ldap", 389),
    ("ldaps", 636),
    ("microsoft-ds", 445),
    ("ms-wbt-server", 3389),
    ("mysql", 3306),
    ("nntp", 119),
    ("ntp", 123),
    ("pop3", 110),
    ("pop3s", 995),
    ("postgresql", 5432),
    ("rdp", 3389),
    ("redis", 6379),
    ("rsync", 873),
    ("sip", 5060),
    ("smtp", 25),
    ("smtps", 465),
    ("snmp", 161),
    ("socks", 1080),
    ("ssh", 22),
    ("submission", 587),
    ("syslog", 514),
    ("telnet", 23),
    ("tftp", 69),
    ("xmpp-client", 5222),
];

fn port_number(name: &str) -> Option<u64> {
    SERVICES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, port)| port)
}

fn parse_u64(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    text.strip_prefix('+').unwrap_or(text).parse().ok()
}

fn unsupported(op: Op, name: &str, what: &str) -> CheckError {
    (
        None,
        format!(
            "operator '{}' is not supported for {what} field '{name}'",
            op.as_str()
        ),
    )
}

/// An address field's check (`build` for [`Kind::Ip`] and [`Kind::Net`]),
/// from values as they come: the compiler streams a large list's items
/// here without gathering them first. `W` says where a value was written;
/// an error names the value's.
pub(crate) fn build_net<'v, W>(
    name: &str,
    op: Op,
    count: usize,
    values: impl Iterator<Item = (&'v str, W)>,
) -> Result<(Cmp, bool), (Option<W>, String)> {
    if !matches!(op, Op::Eq | Op::Ne | Op::In | Op::Intersects) {
        let (_, message) = unsupported(op, name, "address");
        return Err((None, message));
    }
    // Straight into the matcher's ranges: at a million values a vector of
    // parsed networks and a second of 32-byte ranges were two of the
    // largest allocations of a load.
    // `count` values, mostly IPv4 in feeds: sized once rather than doubled.
    let mut v4 = Vec::with_capacity(count);
    let mut v6 = Vec::new();
    for (text, at) in values {
        match parse_net(text) {
            Some(IpNet::V4(n)) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
            Some(IpNet::V6(n)) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            None => {
                return Err((
                    Some(at),
                    format!("'{text}' is not a valid IP address or CIDR for field '{name}'"),
                ));
            }
        }
    }
    Ok((
        Cmp::Net(Box::new(NetMatch::from_ranges(v4, v6))),
        op == Op::Ne,
    ))
}

pub(crate) fn build(
    name: &str,
    field: &Field,
    op: Op,
    values: &[Val<'_>],
) -> Result<(Cmp, bool), CheckError> {
    if op == Op::Exists {
        return Ok((Cmp::Exists, false));
    }
    let first = || {
        values
            .first()
            .ok_or((None, format!("operator '{}' needs a value", op.as_str())))
    };
    match field.kind {
        Kind::Str => build_str(field, op, values, first()),
        Kind::U64 => {
            let port = matches!(
                field.src,
                Src::Event(FieldId::ServerPort | FieldId::ClientPort)
                    | Src::Either(FieldId::ServerPort, FieldId::ClientPort)
            );
            let num = |v: &Val<'_>| {
                let named = port.then(|| port_number(v.text)).flatten();
                named.or_else(|| parse_u64(v.text)).ok_or((
                    Some(v.at),
                    format!(
                        "'{}' is not a valid unsigned number for field '{name}'",
                        v.text
                    ),
                ))
            };
            let cmp = match op {
                Op::Eq | Op::Ne => Cmp::U64Eq(num(first()?)?),
                Op::Lt => Cmp::U64Lt(num(first()?)?),
                Op::Le => Cmp::U64Le(num(first()?)?),
                Op::Gt => Cmp::U64Gt(num(first()?)?),
                Op::Ge => Cmp::U64Ge(num(first()?)?),
                Op::In | Op::Intersects => Cmp::U64In(U64Set::new(
                    values.iter().map(num).collect::<Result<_, _>>()?,
                )),
                _ => return Err(unsupported(op, name, "numeric")),
            };
            Ok((cmp, op == Op::Ne))
        }
        Kind::I64 => {
            let num = |v: &Val<'_>| {
                let text = v.text.strip_prefix('+').unwrap_or(v.text);
                text.parse::<i64>().ok().ok_or((
                    Some(v.at),
                    format!("'{}' is not a valid number for field '{name}'", v.text),
                ))
            };
            let cmp = match op {
                Op::Eq | Op::Ne => Cmp::I64Eq(num(first()?)?),
                Op::Lt => Cmp::I64Lt(num(first()?)?),
                Op::Le => Cmp::I64Le(num(first()?)?),
                Op::Gt => Cmp::I64Gt(num(first()?)?),
                Op::Ge => Cmp::I64Ge(num(first()?)?),
                Op::In | Op::Intersects => Cmp::I64In(
                    values
                        .iter()
                        .map(num)
                        .collect::<Result<Vec<_>, _>>()?
                        .into_boxed_slice(),
                ),
                _ => return Err(unsupported(op, name, "numeric")),
            };
            Ok((cmp, op == Op::Ne))
        }
        Kind::Ip | Kind::Net => build_net(
            name,
            op,
            values.len(),
            values.iter().map(|v| (v.text, v.at)),
        ),
        Kind::Bool => {
            let boolean = |v: &Val<'_>| match v.text.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err((
                    Some(v.at),
                    format!("'{}' is not a valid boolean for field '{name}'", v.text),
                )),
            };
            match op {
                Op::Eq | Op::Ne => Ok((Cmp::BoolEq(boolean(first()?)?), op == Op::Ne)),
                Op::In | Op::Intersects => {
                    let set = values.iter().map(boolean).collect::<Result<Vec<_>, _>>()?;
                    let cmp = match (set.contains(&true), set.contains(&false)) {
                        (true, true) => Cmp::Exists,
                        (true, false) => Cmp::BoolEq(true),
                        (false, true) => Cmp::BoolEq(false),
                        (false, false) => Cmp::Never,
                    };
                    Ok((cmp, false))
                }
                _ => Err(unsupported(op, name, "boolean")),
            }
        }
        Kind::Labels => {
            let set = || {
                LabelSet(
                    values
                        .iter()
                        .map(|v| match v.text.split_once(':') {
                            Some((k, val)) => (k.into(), Some(val.into())),
                            None => (v.text.into(), None),
                        })
                        .collect(),
                )
            };
            match op {
                Op::In => Ok((Cmp::LabelsAll(set()), false)),
                Op::Intersects => Ok((Cmp::LabelsAny(set()), false)),
                _ => Err(unsupported(op, name, "label map")),
            }
        }
    }
}

fn build_str(
    field: &Field,
    op: Op,
    values: &[Val<'_>],
    first: Result<&Val<'_>, CheckError>,
) -> Result<(Cmp, bool), CheckError> {
    let evt_type = field.src == Src::Event(FieldId::EvtType);
    let canon = |s: &str| -> Box<str> {
        if evt_type {
            canonical_evt_type(s).into()
        } else {
            s.into()
        }
    };
    if evt_type
        && matches!(op, Op::Eq | Op::Ne | Op::In | Op::Intersects)
        && let Some(v) = values.iter().find(|v| !evt_types::is_known(v.text))
    {
        let hint = evt_types::suggest(v.text)
            .map_or_else(String::new, |s| format!("; did you mean '{s}'?"));
        return Err((Some(v.at), format!("unknown event type '{}'{hint}", v.text)));
    }
    let cmp = match op {
        Op::Eq | Op::Ne => Cmp::StrEq(canon(text(first)?)),
        Op::Lt => Cmp::StrLt(text(first)?.into()),
        Op::Le => Cmp::StrLe(text(first)?.into()),
        Op::Gt => Cmp::StrGt(text(first)?.into()),
        Op::Ge => Cmp::StrGe(text(first)?.into()),
        Op::Contains => Cmp::Contains(text(first)?.into()),
        Op::IContains => Cmp::IContains(text(first)?.as_bytes().into()),
        Op::StartsWith => Cmp::StartsWith(text(first)?.into()),
        Op::BContains => Cmp::BContains(hex(first?)?),
        Op::BStartsWith => Cmp::BStartsWith(hex(first?)?),
        Op::EndsWith => Cmp::EndsWith(text(first)?.into()),
        Op::Glob => Cmp::Glob(Glob::new(text(first)?, false)),
        Op::IGlob => Cmp::Glob(Glob::new(text(first)?, true)),
        Op::Regex => {
            let v = first?;
            Cmp::Regex(regex(v.text).map_err(|e| (Some(v.at), e))?)
        }
        Op::In | Op::Intersects => Cmp::StrIn(StrSet::new(
            values.iter().map(|v| canon(v.text).into_string()).collect(),
        )),
        Op::PMatch => Cmp::PMatch(PathSet::new(
            &values
                .iter()
                .map(|v| v.text.to_string())
                .collect::<Vec<_>>(),
        )),
        Op::Exists => Cmp::Exists,
    };
    Ok((cmp, op == Op::Ne))
}

fn hex(v: &Val<'_>) -> Result<Box<[u8]>, CheckError> {
    let bad = || {
        (
            Some(v.at),
            format!("'{}' is not a valid hex byte string", v.text),
        )
    };
    let digits = v.text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(bad());
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

fn text<'v>(v: Result<&Val<'v>, CheckError>) -> Result<&'v str, CheckError> {
    v.map(|v| v.text)
}

/// Falco matches regexes against the whole value (RE2, anchored both ends).
fn regex(pattern: &str) -> Result<regex::Regex, String> {
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
    };
    // Validate alone first: a valid pattern has balanced groups, so wrapping
    // it cannot change its meaning.
    build(pattern).map_err(|e| format!("invalid regex '{pattern}': {e}"))?;
    build(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regex '{pattern}': {e}"))
}
