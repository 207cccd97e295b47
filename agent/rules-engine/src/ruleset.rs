//! The compiled ruleset: evaluation, rendering and what the kernel may skip.
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value as Json;

use crate::dest_index::{self, DestIndex};
use crate::diagnostics::Location;
use crate::eval::{self, CLOSE, CONNECT, Node, OTHER, SENDTO};
use crate::event::{Event, Value};
use crate::netset::NetSet;
use crate::output::Template;
use crate::{FieldId, Priority};

/// Falco's `rule_matching`: stop at the first matching rule (Falco's
/// default), or report every match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RuleMatching {
    #[default]
    First,
    All,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rule_matching '{0}': expected 'first' or 'all'")]
pub struct InvalidRuleMatching(pub String);

impl FromStr for RuleMatching {
    type Err = InvalidRuleMatching;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "first" => Ok(RuleMatching::First),
            "all" => Ok(RuleMatching::All),
            _ => Err(InvalidRuleMatching(s.to_string())),
        }
    }
}

/// Engine options, as in Falco's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub rule_matching: RuleMatching,
    /// Rules less severe than this are loaded but never evaluated (Falco's
    /// `priority` setting).
    pub min_priority: Priority,
    /// Skip rules that need event types or fields Egret cannot provide
    /// (but that Falco knows) instead of refusing the load; one summarised
    /// warning says how many and why. A field or event type unknown to
    /// Falco too stays an error.
    pub skip_unsupported: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rule_matching: RuleMatching::First,
            min_priority: Priority::Debug,
            skip_unsupported: false,
        }
    }
}

/// Identifies a rule within the [`Ruleset`] that produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub(crate) u32);

impl RuleId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A rule's output for one event.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The output template with every `%field` expanded (`<NA>` if missing).
    pub output: String,
    /// Each field the template names, in order of first use; `null` if missing.
    pub fields: Vec<(Arc<str>, Json)>,
}

#[derive(Debug)]
pub struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) desc: Arc<str>,
    pub(crate) priority: Priority,
    pub(crate) tags: Arc<[Arc<str>]>,
    pub(crate) enabled: bool,
    pub(crate) location: Location,
    pub(crate) output_template: String,
    pub(crate) condition: Node,
    pub(crate) output: Template,
    /// Event-type buckets the rule can match in.
    pub(crate) types: u8,
}

impl Rule {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn desc(&self) -> &str {
        &self.desc
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Sorted and deduplicated, as Falco reports them.
    pub fn tags(&self) -> &Arc<[Arc<str>]> {
        &self.tags
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Always `syscall`: rules for other sources are skipped at load.
    pub fn source(&self) -> &'static str {
        crate::collect::SYSCALL
    }

    /// Where the rule was (first) defined.
    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn output_template(&self) -> &str {
        &self.output_template
    }

    /// The fields the output names, in order of first use.
    pub fn output_fields(&self) -> &[Arc<str>] {
        self.output.keys()
    }

    /// Every event field the condition reads (after macro and list
    /// expansion), each once, in first-use order.
    pub fn condition_fields(&self) -> Vec<FieldId> {
        let mut fields = Vec::new();
        self.condition.each_field(&mut |field| {
            if !fields.contains(&field) {
                fields.push(field);
            }
        });
        fields
    }

    /// Whether the condition reads the call's result ([`FieldId::is_call_result`]).
    pub fn reads_result(&self) -> bool {
        self.condition_fields()
            .iter()
            .any(|field| field.is_call_result())
    }

    /// Evaluates this rule alone, whatever its enabled state.
    pub fn matches<E: Event + ?Sized>(&self, event: &E) -> bool {
        self.condition.eval(event)
    }

    /// Expands the output for an event (allocates; call it for matches only).
    pub fn render<E: Event + ?Sized>(&self, event: &E) -> Rendered {
        let (output, fields) = self.output.render(event);
        Rendered { output, fields }
    }
}

/// Which rules an evaluation runs, for a caller that evaluates a call at
/// its attempt and again when its result is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Every rule.
    All,
    /// Rules that do not read the result ([`Rule::reads_result`]).
    Attempt,
    /// Only the rules that read the result.
    Result,
}

/// Compiled rules, indexed by event type, and for connects and sends by
/// destination.
#[derive(Debug, Default)]
pub struct Ruleset {
    rules: Vec<Rule>,
    /// Rule ids to run per bucket (connect, sendto, other, close), in load
    /// order.
    buckets: [Box<[u32]>; 4],
    /// Per rule: [`Rule::reads_result`].
    reads_result: Box<[bool]>,
    /// The connect and sendto buckets by `fd.sip` (`None`: too few rules
    /// name a destination for it to pay).
    pub(crate) by_destination: [Option<DestIndex>; 2],
    matching: RuleMatching,
}

/// The most networks [`Ruleset::kernel_ignorable_networks`] returns; a
/// longer exact list is not built (no kernel map of the agent holds it,
/// and ignoring less is always safe). The agent's own bound is the same.
pub const MAX_KERNEL_IGNORABLE: usize = 32_768;
/// Ranges any intermediate set of the ignore analysis may take; past it the
/// part is treated as unknown (nothing ignored for it), which is safe and,
/// this far above [`MAX_KERNEL_IGNORABLE`], loses nothing a kernel map holds.
const IGNORE_ANALYSIS_CAP: usize = 4 * MAX_KERNEL_IGNORABLE;

/// The destinations `rule` may match on a connect or send (`None`: any, or
/// too scattered to index).
fn possible_destinations(rule: &Rule) -> Option<NetSet> {
    // The bound is cheap; the set algebra on a million-entry list is not.
    if eval::destination_ranges_bound(&rule.condition) > 16 * dest_index::MAX_RULE_RANGES {
        return None;
    }
    let (_, never) = eval::destination_truth(&rule.condition);
    if never.is_empty() {
        return None;
    }
    let may = never.complement();
    (may.range_count() <= dest_index::MAX_RULE_RANGES).then_some(may)
}

fn bucket_of(bit: u8) -> usize {
    match bit {
        CONNECT => 0,
        SENDTO => 1,
        CLOSE => 3,
        _ => 2,
    }
}

impl Ruleset {
    pub(crate) fn new(rules: Vec<Rule>, options: &Options) -> Ruleset {
        let mut buckets: [Vec<u32>; 4] = Default::default();
        for (i, rule) in rules.iter().enumerate() {
            if !rule.enabled || rule.priority > options.min_priority {
                continue;
            }
            for bit in [CONNECT, SENDTO, OTHER, CLOSE] {
                if rule.types & bit != 0
                    && let (Some(bucket), Ok(id)) =
                        (buckets.get_mut(bucket_of(bit)), u32::try_from(i))
                {
                    bucket.push(id);
                }
            }
        }
        let index = |bucket: &[u32]| {
            if bucket.len() < dest_index::MIN_INDEXED {
                return None;
            }
            let with: Vec<(u32, Option<NetSet>)> = bucket
                .iter()
                .map(|&id| (id, rules.get(id as usize).and_then(possible_destinations)))
                .collect();
            DestIndex::build(&with)
        };
        let by_destination = [index(&buckets[0]), index(&buckets[1])];
        let reads_result = rules.iter().map(Rule::reads_result).collect();
        Ruleset {
            rules,
            buckets: buckets.map(Vec::into_boxed_slice),
            reads_result,
            by_destination,
            matching: options.rule_matching,
        }
    }

    /// Whether any rule that can match a connect reads its result: only
    /// then is waiting for connect results worth anything.
    pub fn connects_read_result(&self) -> bool {
        self.buckets[bucket_of(CONNECT)]
            .iter()
            .any(|&id| self.reads_result.get(id as usize).copied().unwrap_or(false))
    }

    /// Whether rule `id` reads the result ([`Rule::reads_result`]).
    pub fn reads_result(&self, id: RuleId) -> bool {
        self.reads_result.get(id.index()).copied().unwrap_or(false)
    }

    /// The rules `evaluate` runs for `event`, at most, ascending: (rules for
    /// any destination, rules for this one) with the destination index,
    /// else the whole bucket and nothing.
    /// Also returns the event's exact type ([`eval::exact_type`]), read
    /// here once for the bucket and every rule's `evt.type` tests.
    fn candidates_of<E: Event + ?Sized>(&self, event: &E) -> ((&[u32], &[u32]), u8) {
        let bit = match event.value(FieldId::EvtType) {
            Value::Str(t) => eval::type_bit(t),
            _ => OTHER,
        };
        let bucket = bucket_of(bit);
        let exact = bit & eval::EXACT_TYPES;
        let all = self.buckets.get(bucket).map_or(&[][..], |b| &b[..]);
        if let Some(Some(index)) = self.by_destination.get(bucket)
            && let Value::Ip(ip) = event.value(FieldId::ServerIp)
        {
            return (index.lookup(ip), exact);
        }
        ((all, &[]), exact)
    }

    /// How many rules [`evaluate`](Self::evaluate) may run for `event` (it
    /// stops at the first match with [`RuleMatching::First`]): what the
    /// event-type and destination indexes leave.
    pub fn candidates<E: Event + ?Sized>(&self, event: &E) -> usize {
        let ((a, b), _) = self.candidates_of(event);
        let mut n = 0;
        dest_index::merged(a, b, |_| {
            n += 1;
            true
        });
        n
    }

    /// Clears `matches`, then fills it with the rules the event matches, in
    /// load order (at most one with [`RuleMatching::First`]). Allocation-free
    /// once `matches` has capacity.
    pub fn evaluate<E: Event + ?Sized>(&self, event: &E, matches: &mut Vec<RuleId>) {
        self.evaluate_phase(event, matches, Phase::All);
    }

    /// [`evaluate`](Self::evaluate) restricted to the rules of `phase`
    /// (with [`RuleMatching::First`], the first match among them).
    pub fn evaluate_phase<E: Event + ?Sized>(
        &self,
        event: &E,
        matches: &mut Vec<RuleId>,
        phase: Phase,
    ) {
        matches.clear();
        let ((a, b), exact) = self.candidates_of(event);
        let first = self.matching == RuleMatching::First;
        dest_index::merged(a, b, |id| {
            if phase != Phase::All
                && self.reads_result.get(id as usize).copied().unwrap_or(false)
                    != (phase == Phase::Result)
            {
                return true;
            }
            if self
                .rules
                .get(id as usize)
                .is_some_and(|r| r.condition.eval_as(event, exact))
            {
                matches.push(RuleId(id));
                return !first;
            }
            true
        });
    }

    /// Falco's `rule_matching` this set was built with.
    pub fn matching(&self) -> RuleMatching {
        self.matching
    }

    pub fn rule(&self, id: RuleId) -> Option<&Rule> {
        self.rules.get(id.index())
    }

    /// Every compiled rule, enabled or not, in load order; a rule's position
    /// is its [`RuleId`] index.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn find(&self, name: &str) -> Option<RuleId> {
        let i = self.rules.iter().position(|r| &*r.name == name)?;
        u32::try_from(i).ok().map(RuleId)
    }

    /// Ids of the rules [`evaluate`](Self::evaluate) may run, in order.
    fn active_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .buckets
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Number of rules that [`evaluate`](Self::evaluate) runs.
    pub fn active_len(&self) -> usize {
        self.active_ids().len()
    }

    /// Destination networks that no active rule can match: for every address
    /// in them, each rule's condition is provably false (from checks such as
    /// `not fd.sip in (...)` or `not fd.snet in (...)`, through and/or/not).
    /// Connections there may be dropped in the kernel without losing an
    /// alert. Conservative: empty if any rule could match any destination,
    /// and empty when no active rule sees connects or sends. This relies on
    /// the agent always supplying the destination (`fd.sip`) and an
    /// `evt.type` of connect or sendto for the hooks' events. Empty, too,
    /// when the exact list would take more than [`MAX_KERNEL_IGNORABLE`]
    /// networks (the complement of an IOC list of a million hosts).
    pub fn kernel_ignorable_networks(&self) -> Vec<IpNet> {
        let mut active: Vec<(usize, &Rule)> = self
            .active_ids()
            .iter()
            .filter_map(|&i| self.rules.get(i as usize))
            // Rules that only match other event types never see the hooks'
            // connect and sendto events.
            .filter(|rule| rule.types & (CONNECT | SENDTO) != 0)
            .map(|rule| (eval::destination_ranges_bound(&rule.condition), rule))
            .collect();
        // Smallest first: the intersection is then down to a few ranges
        // before a rule with a huge list is looked at, and that rule costs
        // only its ranges inside them (the analysis used to build, complement
        // and intersect all of a million-entry list: most of a reload).
        active.sort_by_key(|(bound, _)| *bound);
        let considered = active.len();
        let mut ignorable = NetSet::all();
        for (_, rule) in active {
            let (_, never) =
                eval::destination_truth_within(&rule.condition, &ignorable, IGNORE_ANALYSIS_CAP);
            ignorable = ignorable.intersect(&never);
            if ignorable.is_empty() {
                break;
            }
        }
        if considered == 0 || ignorable.range_count() > MAX_KERNEL_IGNORABLE {
            return Vec::new();
        }
        ignorable
            .to_nets_bounded(MAX_KERNEL_IGNORABLE)
            .unwrap_or_default()
    }
}
