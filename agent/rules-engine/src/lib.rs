//! Egret's rule engine: Falco-compatible YAML rules (rules, macros, lists,
//! exceptions, `override`/`append`) compiled into allocation-free
//! evaluators over the fields Egret provides.
//!
//! ```
//! use egret_rules::{load, Options, Source, TestEvent, FieldId};
//!
//! let rules = "
//! - rule: Outbound Connection in Container
//!   desc: Detects outbound network connection from container to external IP
//!   condition: >
//!     evt.type = connect and
//!     container and
//!     not fd.sip in (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)
//!   output: >
//!     Container outbound connection to external IP: (command=%proc.cmdline connection=%fd.name user=%user.name)
//!   priority: WARNING
//!   tags: [network, outbound]
//! ";
//! let (ruleset, _warnings) = load(&[Source::new("egress.yaml", rules)], &Options::default())
//!     .into_result()
//!     .unwrap();
//! let event = TestEvent::connect("203.0.113.7".parse().unwrap(), 443)
//!     .in_pod("shop", "web-1", "nginx:1.27");
//! let mut matches = Vec::new();
//! ruleset.evaluate(&event, &mut matches);
//! let rule = ruleset.rule(matches[0]).unwrap();
//! assert_eq!(rule.priority().as_str(), "Warning");
//! assert!(rule.render(&event).output.contains("connection=203.0.113.7:443"));
//! ```
//!
//! How the agent uses it:
//! - implement [`Event`] for its decoded, enriched event (one borrowed
//!   [`Value`] per [`FieldId`]; `container.id` is `"host"` outside containers);
//! - [`load`] the bundled and user sources in order, print
//!   [`Loaded::diagnostics`] (or use [`Loaded::into_result`] to refuse any
//!   error); [`check`] is the same for `egret rules check`;
//! - per event, [`Ruleset::evaluate`] into a reused `Vec<RuleId>`, then for
//!   each match [`Ruleset::rule`] and [`Rule::render`];
//! - program the kernel's ignore list from
//!   [`Ruleset::kernel_ignorable_networks`].
//!
//! Semantics worth knowing, where Egret differs from or refines Falco:
//! - A comparison on a missing value is false, so `not <comparison>` is true.
//! - Address fields (`fd.sip`, `fd.rip`, `fd.cip`) treat CIDR literals as
//!   networks in `=`, `!=`, `in`; IPv4-mapped IPv6 addresses compare as IPv4.
//! - `evt.type` literals `sendmsg` and `sendmmsg` compile to `sendto`: the UDP
//!   hook cannot tell these calls apart and reports `sendto`.
//! - `regex` is Rust's regex syntax (close to RE2's), matched against the
//!   whole value; `icontains`/`iglob` fold ASCII case only.
//! - Field transformers (`val()`, `tolower()`, ...) are refused with an
//!   error.
//! - A list name expands inside `(...)`, right after `in`, `intersects`
//!   or `pmatch`, and as a single value when the list has one item; Falco's
//!   textual substitution would also replace it elsewhere. Lists whose names
//!   the grammar cannot express are substituted textually, as in Falco.
//! - `evt.type` values must be Falco event names (a typo is an error with a
//!   suggestion); port fields take service names (`fd.sport = https`).
//! - Loading is bounded in bytes and nodes (see docs/rules.md, "Limits");
//!   [`read_source`] reads a file with those bounds.
//! - The macro `container` (`container.id != host`) is built in.
//! - Rules using a field outside the catalog are rejected (an error, or a
//!   warning with `skip-if-unknown-filter: true`); that includes fields in
//!   the output, as Falco rejects unknown output fields.
//! - `%evt.time` renders as the UTC time of day (JSON: nanoseconds).
//! - [`RuleMatching::First`] is the default, as in Falco.

mod ast;
mod checks;
mod collect;
mod compile;
mod dest_index;
mod diagnostics;
mod eval;
mod event;
mod evt_types;
mod exceptions;
mod extra;
mod falco_fields;
mod fields;
mod lexer;
mod load;
mod matchers;
mod netmatch;
mod netset;
mod output;
mod parser;
mod priority;
mod reader;
mod ruleset;
mod source;
#[cfg(any(test, feature = "test-util"))]
mod testing;
mod yaml;

pub use diagnostics::{Diagnostic, Location, Severity};
pub use event::{Event, Labels, Value};
pub use extra::{
    FIELD_CATALOGUE, FieldInfo, JsonEvent, OutputTemplate, OwnedValue, TemplateError,
    event_from_json, field_catalogue,
};
pub use fields::FieldId;
pub use load::{LoadError, Loaded, RuleReport, RuleStatus, Source, check, load};
pub use parser::ParseError;
pub use priority::{InvalidPriority, Priority};
pub use ruleset::{
    InvalidRuleMatching, Options, Phase, Rendered, Rule, RuleId, RuleMatching, Ruleset,
};
pub use source::{MAX_SOURCE_BYTES, MAX_TOTAL_BYTES, ReadError, read_source};
#[cfg(any(test, feature = "test-util"))]
pub use testing::TestEvent;

/// Checks one condition's syntax only (no macros, lists or fields).
pub fn parse_condition(condition: &str) -> Result<(), ParseError> {
    parser::parse(condition).map(drop)
}
