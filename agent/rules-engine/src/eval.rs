//! Compiled conditions and their evaluation. Nothing here allocates: values
//! are borrowed from the event and every literal was prepared at load time.
use crate::FieldId;
use crate::event::{Event, Value};
use crate::fields::Src;
use crate::matchers::{Glob, PathSet, StrSet, U64Set, icontains};
use crate::netmatch::NetMatch;
use crate::netset::NetSet;

#[derive(Debug)]
pub(crate) enum Node {
    Const(bool),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    /// Exactly one child is true: Falco's `oneof` modifier.
    One(Box<[Node]>),
    Check(Box<Test>),
}

/// One field comparison. `negate` implements `!=`: unlike `not`, it is still
/// false when the value is missing.
#[derive(Debug)]
pub(crate) struct Test {
    pub src: Src,
    pub cmp: Cmp,
    pub negate: bool,
    /// Exact event types (bits of [`EXACT_TYPES`]) for which this test is
    /// certainly true, and certainly false: set by [`Node::learn_types`]
    /// on `evt.type` comparisons, 0 elsewhere. Almost every rule starts
    /// with one, and its bucket already says the event's type, so reading
    /// and comparing the field again was about a third of the tests an
    /// event ran.
    pub known_true: u8,
    pub known_false: u8,
}

impl Test {
    pub(crate) fn new(src: Src, cmp: Cmp, negate: bool) -> Test {
        Test {
            src,
            cmp,
            negate,
            known_true: 0,
            known_false: 0,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Cmp {
    Exists,
    /// `in ()`: nothing matches.
    Never,
    StrEq(Box<str>),
    StrLt(Box<str>),
    StrLe(Box<str>),
    StrGt(Box<str>),
    StrGe(Box<str>),
    Contains(Box<str>),
    IContains(Box<[u8]>),
    StartsWith(Box<str>),
    BContains(Box<[u8]>),
    BStartsWith(Box<[u8]>),
    EndsWith(Box<str>),
    Glob(Glob),
    Regex(regex::Regex),
    StrIn(StrSet),
    PMatch(PathSet),
    U64Eq(u64),
    U64Lt(u64),
    U64Le(u64),
    U64Gt(u64),
    U64Ge(u64),
    U64In(U64Set),
    I64Eq(i64),
    I64Lt(i64),
    I64Le(i64),
    I64Gt(i64),
    I64Ge(i64),
    I64In(Box<[i64]>),
    /// Address in any of the networks: `=`, `in`, `intersects` on addresses
    /// and network fields.
    /// Boxed: the matcher is a few hundred bytes, every other test a few words.
    Net(Box<NetMatch>),
    BoolEq(bool),
    /// `k8s.pod.labels intersects (...)`: some label matches some item.
    LabelsAny(LabelSet),
    /// `k8s.pod.labels in (...)`: every label matches some item.
    LabelsAll(LabelSet),
}

/// Items `key:value` (that label) or `key` (that key, any value).
#[derive(Debug)]
pub(crate) struct LabelSet(pub Vec<(Box<str>, Option<Box<str>>)>);

impl LabelSet {
    fn matches(&self, key: &str, value: &str) -> bool {
        self.0
            .iter()
            .any(|(k, v)| &**k == key && v.as_deref().is_none_or(|v| v == value))
    }
}

/// Reads a field, deriving the few that are not read directly.
pub(crate) fn read<'e, E: Event + ?Sized>(src: &Src, event: &'e E) -> Value<'e> {
    match src {
        Src::Event(id) => event.value(*id),
        Src::TypeChar | Src::FdType => match event.value(FieldId::ServerIp) {
            Value::Ip(ip) => {
                let v4 = ip.to_canonical().is_ipv4();
                Value::Str(match (src, v4) {
                    (Src::TypeChar, true) => "4",
                    (Src::TypeChar, false) => "6",
                    (_, true) => "ipv4",
                    (_, false) => "ipv6",
                })
            }
            _ => Value::Missing,
        },
        Src::SockFamily => match event.value(FieldId::ServerIp) {
            Value::Ip(_) => Value::Str("ip"),
            _ => Value::Missing,
        },
        Src::NotProvided => Value::Missing,
        // Evaluated per end in `Test::eval`; rendered as the server end.
        Src::Either(server, _) => event.value(*server),
        Src::Label(key) => match event.value(FieldId::K8sPodLabels) {
            Value::Labels(labels) => labels.get(key).map_or(Value::Missing, Value::Str),
            _ => Value::Missing,
        },
    }
}

impl Test {
    /// [`eval`](Self::eval) for an event of exact type `exact` (one bit of
    /// [`EXACT_TYPES`], or 0 when the type is another or unknown).
    #[inline]
    fn eval_as<E: Event + ?Sized>(&self, event: &E, exact: u8) -> bool {
        if self.known_true & exact != 0 {
            true
        } else if self.known_false & exact != 0 {
            false
        } else {
            self.eval(event)
        }
    }

    fn eval<E: Event + ?Sized>(&self, event: &E) -> bool {
        // `fd.ip`/`fd.port` match either end, as in Falco; `!=` then means
        // neither end matches.
        let hit = match &self.src {
            Src::Either(a, b) => {
                match (self.cmp.hit(event.value(*a)), self.cmp.hit(event.value(*b))) {
                    (None, None) => None,
                    (x, y) => Some(x == Some(true) || y == Some(true)),
                }
            }
            src => self.cmp.hit(read(src, event)),
        };
        hit.is_some_and(|hit| hit != self.negate)
    }
}

impl Cmp {
    /// Whether the value matches; `None` when it is missing or of another
    /// type than the catalog's (unknown).
    fn hit(&self, value: Value<'_>) -> Option<bool> {
        Some(match (self, value) {
            (_, Value::Missing) => return None,
            (Cmp::Exists, _) => true,
            (Cmp::Never, _) => false,
            (Cmp::StrEq(s), Value::Str(v)) => v == &**s,
            (Cmp::StrLt(s), Value::Str(v)) => v < &**s,
            (Cmp::StrLe(s), Value::Str(v)) => v <= &**s,
            (Cmp::StrGt(s), Value::Str(v)) => v > &**s,
            (Cmp::StrGe(s), Value::Str(v)) => v >= &**s,
            (Cmp::Contains(s), Value::Str(v)) => v.contains(&**s),
            (Cmp::IContains(s), Value::Str(v)) => icontains(v, s),
            (Cmp::StartsWith(s), Value::Str(v)) => v.starts_with(&**s),
            (Cmp::BContains(b), Value::Str(v)) => {
                b.is_empty() || v.as_bytes().windows(b.len()).any(|w| w == &**b)
            }
            (Cmp::BStartsWith(b), Value::Str(v)) => v.as_bytes().starts_with(b),
            (Cmp::EndsWith(s), Value::Str(v)) => v.ends_with(&**s),
            (Cmp::Glob(g), Value::Str(v)) => g.matches(v),
            (Cmp::Regex(r), Value::Str(v)) => r.is_match(v),
            (Cmp::StrIn(set), Value::Str(v)) => set.contains(v),
            (Cmp::PMatch(set), Value::Str(v)) => set.matches(v),
            (Cmp::U64Eq(n), Value::U64(v)) => v == *n,
            (Cmp::U64Lt(n), Value::U64(v)) => v < *n,
            (Cmp::U64Le(n), Value::U64(v)) => v <= *n,
            (Cmp::U64Gt(n), Value::U64(v)) => v > *n,
            (Cmp::U64Ge(n), Value::U64(v)) => v >= *n,
            (Cmp::U64In(set), Value::U64(v)) => set.contains(v),
            (Cmp::Net(set), Value::Ip(ip)) => set.contains(ip),
            (Cmp::BoolEq(b), Value::Bool(v)) => v == *b,
            (Cmp::LabelsAny(set), Value::Labels(labels)) => {
                let mut any = false;
                labels.for_each_label(&mut |k, v| any |= set.matches(k, v));
                any
            }
            (Cmp::LabelsAll(set), Value::Labels(labels)) => {
                let mut all = true;
                labels.for_each_label(&mut |k, v| all &= set.matches(k, v));
                all
            }
            (Cmp::I64Eq(n), Value::I64(v)) => v == *n,
            (Cmp::I64Lt(n), Value::I64(v)) => v < *n,
            (Cmp::I64Le(n), Value::I64(v)) => v <= *n,
            (Cmp::I64Gt(n), Value::I64(v)) => v > *n,
            (Cmp::I64Ge(n), Value::I64(v)) => v >= *n,
            (Cmp::I64In(set), Value::I64(v)) => set.contains(&v),
            // The agent supplied another type than the catalog's: unknown.
            _ => return None,
        })
    }
}

impl Node {
    /// Calls `f` with every event field the condition reads.
    pub fn each_field(&self, f: &mut dyn FnMut(FieldId)) {
        match self {
            Node::Const(_) => {}
            Node::And(nodes) | Node::Or(nodes) | Node::One(nodes) => {
                nodes.iter().for_each(|n| n.each_field(f))
            }
            Node::Not(node) => node.each_field(f),
            Node::Check(test) => match &test.src {
                Src::Event(field) => f(*field),
                Src::Either(a, b) => {
                    f(*a);
                    f(*b);
                }
                // Derived from the destination address.
                Src::TypeChar | Src::FdType => f(FieldId::ServerIp),
                Src::Label(_) => f(FieldId::K8sPodLabels),
                Src::SockFamily | Src::NotProvided => {}
            },
        }
    }

    pub fn eval<E: Event + ?Sized>(&self, event: &E) -> bool {
        self.eval_as(event, exact_type(event))
    }

    /// [`eval`](Self::eval) for an event whose exact type the caller has
    /// read already ([`exact_type`]).
    pub(crate) fn eval_as<E: Event + ?Sized>(&self, event: &E, exact: u8) -> bool {
        match self {
            Node::Const(b) => *b,
            Node::And(nodes) => nodes.iter().all(|n| n.eval_as(event, exact)),
            Node::Or(nodes) => nodes.iter().any(|n| n.eval_as(event, exact)),
            Node::Not(node) => !node.eval_as(event, exact),
            Node::One(nodes) => {
                nodes
                    .iter()
                    .filter(|n| n.eval_as(event, exact))
                    .take(2)
                    .count()
                    == 1
            }
            Node::Check(test) => test.eval_as(event, exact),
        }
    }

    /// Marks every `evt.type` comparison with the exact types it is
    /// certainly true and false for (see [`Test::known_true`]).
    pub(crate) fn learn_types(&mut self) {
        match self {
            Node::Const(_) => {}
            Node::And(nodes) | Node::Or(nodes) | Node::One(nodes) => {
                nodes.iter_mut().for_each(Node::learn_types)
            }
            Node::Not(node) => node.learn_types(),
            Node::Check(test) => {
                if let Some((may_true, may_false)) = test_type_masks(test) {
                    test.known_true = may_true & !may_false & EXACT_TYPES;
                    test.known_false = may_false & !may_true & EXACT_TYPES;
                }
            }
        }
    }
}

/// Event types whose `evt.type` value is one known string: a test of
/// `evt.type` has one answer for all their events.
pub(crate) const EXACT_TYPES: u8 = CONNECT | SENDTO | CLOSE;

/// The event's type as one bit of [`EXACT_TYPES`], or 0.
pub(crate) fn exact_type<E: Event + ?Sized>(event: &E) -> u8 {
    match event.value(FieldId::EvtType) {
        Value::Str(t) => type_bit(t) & EXACT_TYPES,
        _ => 0,
    }
}

/// Event-type buckets: rules are indexed by the `evt.type` values they can
/// match, so an event only runs the rules of its bucket.
pub(crate) const CONNECT: u8 = 1;
pub(crate) const SENDTO: u8 = 2;
/// Any other value, or none.
pub(crate) const OTHER: u8 = 4;
/// A flow's end or interim report. Only rules whose condition names
/// `close` in an `evt.type` comparison get this bucket (see
/// `load.rs`): rules written for attempts never fire on flow records.
pub(crate) const CLOSE: u8 = 8;
pub(crate) const ALL_TYPES: u8 = CONNECT | SENDTO | OTHER | CLOSE;

pub(crate) fn type_bit(evt_type: &str) -> u8 {
    match evt_type {
        "connect" => CONNECT,
        "sendto" => SENDTO,
        "close" => CLOSE,
        _ => OTHER,
    }
}

/// (types for which the node may be true, types for which it may be false).
pub(crate) fn type_masks(node: &Node) -> (u8, u8) {
    match node {
        Node::Const(true) => (ALL_TYPES, 0),
        Node::Const(false) => (0, ALL_TYPES),
        Node::And(nodes) => nodes
            .iter()
            .map(type_masks)
            .fold((ALL_TYPES, 0), |(t, f), (ct, cf)| (t & ct, f | cf)),
        Node::Or(nodes) => nodes
            .iter()
            .map(type_masks)
            .fold((0, ALL_TYPES), |(t, f), (ct, cf)| (t | ct, f & cf)),
        Node::Not(inner) => {
            let (t, f) = type_masks(inner);
            (f, t)
        }
        // True only where some child may be; false anywhere.
        Node::One(nodes) => (
            nodes.iter().map(type_masks).fold(0, |t, (ct, _)| t | ct),
            ALL_TYPES,
        ),
        Node::Check(test) => test_type_masks(test).unwrap_or((ALL_TYPES, ALL_TYPES)),
    }
}

/// [`type_masks`] of an `evt.type` comparison; `None` for other tests.
fn test_type_masks(test: &Test) -> Option<(u8, u8)> {
    let members: Vec<&str> = match (&test.src, &test.cmp) {
        (Src::Event(FieldId::EvtType), Cmp::StrEq(s)) => vec![s],
        (Src::Event(FieldId::EvtType), Cmp::StrIn(StrSet::Small(items))) => {
            items.iter().map(|s| &**s).collect()
        }
        (Src::Event(FieldId::EvtType), Cmp::StrIn(StrSet::Hashed(set))) => {
            set.iter().map(|s| &**s).collect()
        }
        _ => return None,
    };
    let may_true = members.iter().fold(0, |m, s| m | type_bit(s));
    // Exactly-known types are certainly true; OTHER is never exact.
    let may_false = ALL_TYPES & !(may_true & EXACT_TYPES);
    Some(if test.negate {
        (may_false, may_true)
    } else {
        (may_true, may_false)
    })
}

/// The event types a node can match, as Falco computes them for its
/// "matches too many evt.type values" warning: a finite set, or the
/// complement of one (`inverted`), which is every type but a few.
struct TypeSet {
    inverted: bool,
    names: std::collections::BTreeSet<Box<str>>,
}

impl TypeSet {
    fn all() -> TypeSet {
        TypeSet {
            inverted: true,
            names: Default::default(),
        }
    }

    fn and(self, other: TypeSet) -> TypeSet {
        let (a, b) = (self, other);
        match (a.inverted, b.inverted) {
            (false, false) => TypeSet {
                inverted: false,
                names: a.names.intersection(&b.names).cloned().collect(),
            },
            (false, true) => TypeSet {
                inverted: false,
                names: a.names.difference(&b.names).cloned().collect(),
            },
            (true, false) => TypeSet {
                inverted: false,
                names: b.names.difference(&a.names).cloned().collect(),
            },
            (true, true) => TypeSet {
                inverted: true,
                names: a.names.union(&b.names).cloned().collect(),
            },
        }
    }

    fn not(self) -> TypeSet {
        TypeSet {
            inverted: !self.inverted,
            names: self.names,
        }
    }

    fn or(self, other: TypeSet) -> TypeSet {
        self.not().and(other.not()).not()
    }
}

fn type_set(node: &Node) -> TypeSet {
    match node {
        Node::Const(true) => TypeSet::all(),
        Node::Const(false) => TypeSet::all().not(),
        Node::And(nodes) => nodes
            .iter()
            .map(type_set)
            .fold(TypeSet::all(), TypeSet::and),
        Node::Or(nodes) => nodes
            .iter()
            .map(type_set)
            .fold(TypeSet::all().not(), TypeSet::or),
        Node::Not(inner) => type_set(inner).not(),
        Node::One(_) => TypeSet::all(),
        Node::Check(test) => {
            let names: std::collections::BTreeSet<Box<str>> = match (&test.src, &test.cmp) {
                (Src::Event(FieldId::EvtType), Cmp::StrEq(s)) => [s.clone()].into(),
                (Src::Event(FieldId::EvtType), Cmp::StrIn(StrSet::Small(items))) => {
                    items.iter().cloned().collect()
                }
                (Src::Event(FieldId::EvtType), Cmp::StrIn(StrSet::Hashed(set))) => {
                    set.iter().cloned().collect()
                }
                _ => return TypeSet::all(),
            };
            let set = TypeSet {
                inverted: false,
                names,
            };
            if test.negate { set.not() } else { set }
        }
    }
}

/// Whether the node matches all but finitely many event types: Falco warns
/// about such rules (more than 100 types).
pub(crate) fn matches_unbounded_types(node: &Node) -> bool {
    type_set(node).inverted
}

/// (destinations for which the node is certainly true, certainly false),
/// for events from the hooks: the destination is known and `evt.type` is
/// connect or sendto.
pub(crate) fn destination_truth(node: &Node) -> (NetSet, NetSet) {
    destination_truth_within(node, &NetSet::all(), usize::MAX)
}

/// The sets of a check that is not an address check: all, none or
/// nothing known, whatever the destination.
fn check_truth(node: &Node, test: &Test) -> (NetSet, NetSet) {
    match (&test.src, &test.cmp) {
        // The hooks produce connect and sendto events, and flow
        // records (close) whose destinations must not be ignored in the
        // kernel either.
        (Src::Event(FieldId::EvtType), _) => {
            let (may_true, may_false) = type_masks(node);
            let hooks = CONNECT | SENDTO | CLOSE;
            match (may_true & hooks, may_false & hooks) {
                (0, _) => (NetSet::default(), NetSet::all()),
                (_, 0) => (NetSet::all(), NetSet::default()),
                _ => (NetSet::default(), NetSet::default()),
            }
        }
        (Src::Event(FieldId::ServerIp), Cmp::Exists) => (NetSet::all(), NetSet::default()),
        _ => (NetSet::default(), NetSet::default()),
    }
}

/// [`destination_truth`] inside `window`: both sets are the parts of the
/// exact ones inside it, or smaller (still sound: certainly true, certainly
/// false). Work is bounded by the window and `cap`, not by the lists: an
/// address check takes only its ranges inside the window, and a part that
/// would pass `cap` ranges is given up as unknown (both sets empty) rather
/// than built. With the ignore analysis's window already down to a few
/// ranges, a million-entry list costs a few binary searches.
pub(crate) fn destination_truth_within(
    node: &Node,
    window: &NetSet,
    cap: usize,
) -> (NetSet, NetSet) {
    let unknown = || (NetSet::default(), NetSet::default());
    let (t, f) = match node {
        Node::Const(true) => (window.clone(), NetSet::default()),
        Node::Const(false) => (NetSet::default(), window.clone()),
        Node::And(nodes) => {
            let (mut t, mut f) = (window.clone(), NetSet::default());
            for n in nodes.iter() {
                let (ct, cf) = destination_truth_within(n, window, cap);
                t = t.intersect(&ct);
                f = f.union(&cf);
            }
            (t, f)
        }
        Node::Or(nodes) => {
            let (mut t, mut f) = (NetSet::default(), window.clone());
            for n in nodes.iter() {
                let (ct, cf) = destination_truth_within(n, window, cap);
                t = t.union(&ct);
                f = f.intersect(&cf);
            }
            (t, f)
        }
        Node::Not(inner) => {
            let (t, f) = destination_truth_within(inner, window, cap);
            (f, t)
        }
        Node::Check(test) => match (&test.src, &test.cmp) {
            (Src::Event(FieldId::ServerIp), Cmp::Net(m)) => {
                let Some(t) = m.within(window, cap) else {
                    return unknown();
                };
                let f = window.intersect(&t.complement());
                if test.negate { (f, t) } else { (t, f) }
            }
            _ => {
                let (t, f) = check_truth(node, test);
                (t.intersect(window), f.intersect(window))
            }
        },
        Node::One(_) => unknown(),
    };
    if t.range_count() > cap || f.range_count() > cap {
        return unknown();
    }
    (t, f)
}

/// An upper bound on the ranges of either set [`destination_truth`] returns
/// for `node`, from the sizes of its address checks alone: union and
/// intersection of n and m ranges give at most n + m, a complement n + 1.
pub(crate) fn destination_ranges_bound(node: &Node) -> usize {
    match node {
        Node::Const(_) => 1,
        Node::And(nodes) | Node::Or(nodes) | Node::One(nodes) => nodes
            .iter()
            .map(destination_ranges_bound)
            .fold(1, usize::saturating_add),
        Node::Not(inner) => destination_ranges_bound(inner).saturating_add(1),
        Node::Check(test) => match &test.cmp {
            Cmp::Net(m) => m.range_bound().saturating_add(2),
            _ => 2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, RuleMatching, Source, TestEvent, load};

    /// With the event's exact type, `evt.type` tests answer from what
    /// `learn_types` marked; with 0 they read the field. Both must agree on
    /// every shape a condition can give such a test, for every type.
    #[test]
    fn learned_types_answer_as_the_field_does() {
        let conditions = [
            "evt.type = connect and fd.sport = 443",
            "evt.type in (connect, sendto) and not evt.type = sendto",
            "evt.type != connect or proc.name = curl",
            "not (evt.type in (close, dns))",
            "evt.type = close and fd.sport = 443",
            "evt.type in (connect, socket) and proc.name = curl",
            "evt.type = dns or evt.type = connect",
            "evt.type exists and evt.type startswith conn",
            "evt.type = connect and evt.type = sendto",
            "(evt.type = connect or evt.type = close) and not evt.type in (sendto)",
            "evt.type != close and evt.type != socket",
            // More members than a small set holds: a hashed set.
            "evt.type in (connect, accept, bind, listen, socket, open, openat, recvfrom, close) and fd.sport = 443",
            "not evt.type in (sendto, accept, bind, listen, socket, open, openat, recvfrom, close)",
            "evt.type = oneof (connect, sendto) and proc.name = curl",
        ];
        let yaml: String = conditions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "- rule: r{i}\n  desc: d\n  condition: {c}\n  output: o\n  priority: WARNING\n  warn_evttypes: false\n"
                )
            })
            .collect();
        let options = Options {
            rule_matching: RuleMatching::All,
            ..Options::default()
        };
        let loaded = load(&[Source::new("types.yaml", &yaml)], &options);
        let rules = loaded.ruleset.rules();
        assert_eq!(rules.len(), conditions.len(), "{:?}", loaded.diagnostics);
        let base = TestEvent::connect("203.0.113.7".parse().unwrap(), 443);
        let mut events: Vec<TestEvent> = ["connect", "sendto", "close", "dns", "socket", ""]
            .iter()
            .map(|t| base.clone().with(FieldId::EvtType, *t))
            .collect();
        events.push(base.clone().without(FieldId::EvtType));
        let mut learned = 0;
        for rule in rules {
            for event in &events {
                let exact = exact_type(event);
                assert_eq!(
                    rule.condition.eval_as(event, exact),
                    rule.condition.eval_as(event, 0),
                    "{} on {:?}",
                    rule.name,
                    event.clone().without(FieldId::ProcCmdline)
                );
                learned += usize::from(exact != 0);
            }
        }
        assert!(learned > 0);
        // Marked at all: the first condition's type test knows connect.
        let Node::And(first) = &rules[0].condition else {
            panic!("{:?}", rules[0].condition)
        };
        let Node::Check(test) = &first[0] else {
            panic!("{first:?}")
        };
        assert_eq!(
            (test.known_true, test.known_false),
            (CONNECT, SENDTO | CLOSE)
        );
    }
}
