//! Rules indexed by destination, so that an event runs only the rules that
//! can match its `fd.sip`: a thousand rules that each name a host or a
//! network cost one binary search an event instead of a thousand
//! conditions. The address space is cut into segments where the set of
//! rules that may match is constant; a rule whose possible destinations are
//! unknown or too scattered to index (an IOC list of a million hosts, which
//! its own hash set serves) is run for every destination.
use crate::netset::NetSet;

/// Rules whose possible destinations take more ranges than this are run
/// for every destination: their segments would cost more than their
/// conditions.
pub(crate) const MAX_RULE_RANGES: usize = 256;
/// Rule ids over all segments of one family; beyond it (rules overlapping
/// in many places) the index is not built and every rule runs.
const MAX_ENTRIES: usize = 1 << 20;
/// With fewer indexable rules, running them is as fast as the search.
pub(crate) const MIN_INDEXED: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct DestIndex {
    /// Rules that may match any destination, ascending.
    always: Box<[u32]>,
    v4: Segments,
    v6: Segments,
}

#[derive(Debug, Default)]
struct Segments {
    /// Segment starts, ascending; the first is 0.
    starts: Box<[u128]>,
    /// Segment `i`'s rules are `ids[offsets[i]..offsets[i + 1]]`, ascending.
    offsets: Box<[u32]>,
    ids: Box<[u32]>,
}

impl Segments {
    /// `rules`: (id, disjoint ranges the rule may match in), ids ascending.
    fn build(rules: &[(u32, &[(u128, u128)])]) -> Option<Segments> {
        // (point, +1 enters / -1 leaves, rule)
        let mut edges: Vec<(u128, i8, u32)> = Vec::new();
        for &(id, ranges) in rules {
            for &(start, end) in ranges {
                edges.push((start, 1, id));
                if let Some(after) = end.checked_add(1) {
                    edges.push((after, -1, id));
                }
            }
        }
        edges.sort_unstable();
        let mut active = std::collections::BTreeSet::new();
        let mut starts = vec![0u128];
        let mut offsets = vec![0u32, 0];
        let mut ids: Vec<u32> = Vec::new();
        let mut i = 0;
        while let Some(&(point, _, _)) = edges.get(i) {
            while let Some(&(p, delta, id)) = edges.get(i)
                && p == point
            {
                if delta > 0 {
                    active.insert(id);
                } else {
                    active.remove(&id);
                }
                i += 1;
            }
            if point == 0 {
                // Replaces the empty first segment.
                ids.clear();
                starts.clear();
                offsets.truncate(1);
            }
            starts.push(point);
            ids.extend(active.iter().copied());
            if ids.len() > MAX_ENTRIES {
                return None;
            }
            offsets.push(u32::try_from(ids.len()).ok()?);
        }
        Some(Segments {
            starts: starts.into(),
            offsets: offsets.into(),
            ids: ids.into(),
        })
    }

    fn lookup(&self, x: u128) -> &[u32] {
        let i = self.starts.partition_point(|&s| s <= x).saturating_sub(1);
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => self.ids.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

impl DestIndex {
    /// `rules`: every rule of a bucket in load order, with the destinations
    /// it may match (`None`: any). `None` when indexing would not pay.
    pub fn build(rules: &[(u32, Option<NetSet>)]) -> Option<DestIndex> {
        let indexed = rules.iter().filter(|(_, s)| s.is_some()).count();
        if indexed < MIN_INDEXED {
            return None;
        }
        let always = rules
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(id, _)| *id)
            .collect();
        let family = |v6: bool| {
            let with: Vec<(u32, &[(u128, u128)])> = rules
                .iter()
                .filter_map(|(id, s)| {
                    let (v4, v6s) = s.as_ref()?.ranges();
                    Some((*id, if v6 { v6s } else { v4 }))
                })
                .collect();
            Segments::build(&with)
        };
        Some(DestIndex {
            always,
            v4: family(false)?,
            v6: family(true)?,
        })
    }

    /// Rules that may match an event to `ip`: (any destination, this one's),
    /// each ascending.
    pub fn lookup(&self, ip: std::net::IpAddr) -> (&[u32], &[u32]) {
        let here = match ip.to_canonical() {
            std::net::IpAddr::V4(v4) => self.v4.lookup(u128::from(u32::from(v4))),
            std::net::IpAddr::V6(v6) => self.v6.lookup(u128::from(v6)),
        };
        (&self.always, here)
    }
}

/// Calls `f` with the ids of two ascending lists in ascending order (load
/// order) until it returns `false`.
pub(crate) fn merged(a: &[u32], b: &[u32], mut f: impl FnMut(u32) -> bool) {
    let (mut i, mut j) = (0, 0);
    loop {
        let next = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if x < y => {
                i += 1;
                x
            }
            (Some(&x), Some(&y)) if x == y => {
                i += 1;
                j += 1;
                x
            }
            (_, Some(&y)) => {
                j += 1;
                y
            }
            (Some(&x), None) => {
                i += 1;
                x
            }
            (None, None) => return,
        };
        if !f(next) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> NetSet {
        NetSet::from_nets(items.iter().map(|s| crate::netset::parse_net(s).unwrap()))
    }

    #[test]
    fn segments_list_the_rules_of_each_destination() {
        let mut rules: Vec<(u32, Option<NetSet>)> = (0..10u32)
            .map(|i| (i, Some(set(&[&format!("198.51.100.{i}")]))))
            .collect();
        rules.push((10, None));
        rules.push((11, Some(set(&["198.51.100.0/29", "2001:db8::/32"]))));
        let index = DestIndex::build(&rules).unwrap();
        let ids = |ip: &str| {
            let (a, b) = index.lookup(ip.parse().unwrap());
            let mut out = Vec::new();
            merged(a, b, |id| {
                out.push(id);
                true
            });
            out
        };
        assert_eq!(ids("198.51.100.3"), [3, 10, 11]);
        assert_eq!(ids("::ffff:198.51.100.3"), [3, 10, 11]);
        assert_eq!(ids("198.51.100.9"), [9, 10]);
        assert_eq!(ids("203.0.113.1"), [10]);
        assert_eq!(ids("2001:db8::1"), [10, 11]);
        assert_eq!(ids("0.0.0.0"), [10]);
        assert_eq!(ids("255.255.255.255"), [10]);
        let few: Vec<_> = rules.into_iter().take(3).collect();
        assert!(DestIndex::build(&few).is_none());
    }

    /// The indexed ruleset matches exactly what running every rule does,
    /// for rules of every shape (hosts, networks, negations, `fd.ip`,
    /// catch-alls) and destinations on, beside and off them.
    #[test]
    fn indexed_evaluation_equals_running_every_rule() {
        let mut text = String::new();
        let conditions = [
            "evt.type = connect and fd.sip = 198.51.100.{i}",
            "evt.type in (connect, sendto) and fd.snet in (203.0.113.{i}/30)",
            "evt.type = connect and not fd.sip in (198.51.100.{i}, 10.0.0.0/8)",
            "fd.sip = 198.51.100.{i} or proc.name = tool",
            "evt.type = connect and fd.ip = 198.51.100.{i}",
            "evt.type = sendto and fd.sport = 53 and fd.sip != 198.51.100.{i}",
            "evt.type = connect and fd.sip in (\"2001:db8::{i}\", ::ffff:203.0.113.{i})",
            "evt.type = connect and fd.sport = {i}",
        ];
        for i in 0..64 {
            let cond = conditions[i % conditions.len()].replace("{i}", &i.to_string());
            text.push_str(&format!(
                "- rule: R{i}\n  desc: d\n  condition: {cond}\n  output: o\n  priority: INFO\n"
            ));
        }
        let options = crate::Options {
            rule_matching: crate::RuleMatching::All,
            ..crate::Options::default()
        };
        let loaded = crate::load(&[crate::Source::new("r.yaml", &text)], &options);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let rules = loaded.ruleset;
        assert!(rules.by_destination[0].is_some() && rules.by_destination[1].is_some());
        let mut dests: Vec<std::net::IpAddr> = Vec::new();
        for i in 0..70u8 {
            dests.push([198, 51, 100, i].into());
            dests.push([203, 0, 113, i].into());
            dests.push(format!("::ffff:198.51.100.{i}").parse().unwrap());
            dests.push(format!("2001:db8::{i}").parse().unwrap());
        }
        dests.push([10, 1, 2, 3].into());
        let mut matches = Vec::new();
        let mut checked = 0;
        for dest in dests {
            for port in [53u16, 5, 443] {
                for event in [
                    crate::TestEvent::connect(dest, port),
                    crate::TestEvent::udp_send(dest, port),
                    crate::TestEvent::connect(dest, port).with(crate::FieldId::ProcName, "tool"),
                ] {
                    rules.evaluate(&event, &mut matches);
                    let every: Vec<crate::RuleId> = (0..rules.rules().len() as u32)
                        .map(crate::RuleId)
                        .filter(|id| rules.rules()[id.index()].matches(&event))
                        .collect();
                    assert_eq!(matches, every, "{dest} {port}");
                    checked += every.len();
                }
            }
        }
        assert!(checked > 100, "the events should match rules: {checked}");
    }

    #[test]
    fn merge_stops_when_asked() {
        let mut seen = Vec::new();
        merged(&[1, 4, 6], &[2, 4, 9], |id| {
            seen.push(id);
            id < 6
        });
        assert_eq!(seen, [1, 2, 4, 6]);
    }
}
