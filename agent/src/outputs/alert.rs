//! An alert: what the evaluate stage hands to the outputs. Its JSON form is the
//! stdout line and the falcosidekick-compatible webhook payload.
//!
//! Also what is added to every alert outside the rule files: Falco's
//! `append_output` (matched by source, tags and rule) and falcosidekick's
//! static `customfields`, so an operator can make every payload carry the
//! pod and the cluster without editing the rules.
use std::{collections::BTreeMap, sync::Arc};

use egret_rules::{Event, OutputTemplate};
use serde::{Deserialize, Serialize};

pub use super::output_fields::OutputFields;

pub use egret_rules::Priority;

/// One fired rule for one event.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// RFC 3339 with nanoseconds, from the event's wall time.
    pub time: String,
    pub rule: Arc<str>,
    #[serde(serialize_with = "serialize_priority")]
    pub priority: Priority,
    /// The rule's output template, expanded.
    pub output: String,
    /// Every field the template names; `null` where unknown.
    pub output_fields: OutputFields,
    pub tags: Arc<[Arc<str>]>,
    pub source: &'static str,
    pub hostname: Arc<str>,
}

fn serialize_priority<S: serde::Serializer>(p: &Priority, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

/// The workload identity the shipped default adds to every alert: what a
/// SOAR needs to find and isolate the pod.
pub const WORKLOAD_FIELDS: &[&str] = &[
    "container.id",
    "container.name",
    "container.image.repository",
    "k8s.ns.name",
    "k8s.pod.name",
];

/// One `append_output` entry, as Falco spells it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppendOutput {
    /// Every criterion given must hold; none given matches every alert.
    #[serde(default, rename = "match")]
    pub matching: AppendMatch,
    /// Appended to the output text after a space; `%field`s expand.
    #[serde(default)]
    pub extra_output: Option<String>,
    /// Added to `output_fields`: a field name, or `{key: template}`.
    #[serde(default)]
    pub extra_fields: Vec<ExtraField>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppendMatch {
    pub source: Option<String>,
    /// The rule must carry every one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    pub rule: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ExtraField {
    Name(String),
    Templated(BTreeMap<String, String>),
}

/// `append_output` as configured; when the config does not set it, the
/// shipped default: [`WORKLOAD_FIELDS`] on every alert.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct AppendOutputs(pub Vec<AppendOutput>);

impl Default for AppendOutputs {
    fn default() -> Self {
        AppendOutputs(vec![AppendOutput {
            matching: AppendMatch::default(),
            extra_output: None,
            extra_fields: WORKLOAD_FIELDS
                .iter()
                .map(|f| ExtraField::Name((*f).to_owned()))
                .collect(),
        }])
    }
}

impl Compiled {
    fn matches(&self, source: &str, rule: &str, tags: &[Arc<str>]) -> bool {
        self.source.as_deref().is_none_or(|s| s == source)
            && self.rule.as_deref().is_none_or(|r| r == rule)
            && self
                .tags
                .iter()
                .all(|t| tags.iter().any(|have| &**have == t))
    }
}

#[derive(Debug)]
struct Compiled {
    source: Option<String>,
    tags: Vec<String>,
    rule: Option<String>,
    extra_output: Option<OutputTemplate>,
    /// (key, template, whether the key is a field whose typed value is kept)
    fields: Vec<(Arc<str>, OutputTemplate, bool)>,
}

/// Where one of a rule's `output_fields` comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    /// The rule's own template, its `i`th key.
    Rendered(usize),
    /// An `append_output` entry's field.
    Added { entry: usize, field: usize },
    /// A `custom_fields` entry.
    Custom(usize),
}

/// For one rule: its alerts' `output_fields` keys, sorted, and where each
/// value comes from ([`Additions::plan`]). Sorting, searching and
/// inserting a dozen keys per alert cost more than computing their values.
#[derive(Debug)]
pub struct FieldPlan {
    /// The rule's name: while the plan holds it, no other rule's name can
    /// have its address, so [`FieldPlan::is_for`] identifies the rule.
    rule: Arc<str>,
    rendered: usize,
    slots: Vec<(Arc<str>, Slot)>,
}

impl FieldPlan {
    pub fn is_for(&self, rule: &Arc<str>) -> bool {
        Arc::ptr_eq(&self.rule, rule)
    }
}

/// `append_output` and `custom_fields`, compiled once per configuration.
#[derive(Debug, Default)]
pub struct Additions {
    entries: Vec<Compiled>,
    custom: Vec<(Arc<str>, serde_json::Value)>,
}

impl Additions {
    /// Errors name the entry (`append_output[1].extra_fields[0]: …`).
    pub fn build(
        appends: &[AppendOutput],
        custom: &BTreeMap<String, String>,
    ) -> Result<Additions, String> {
        let mut entries = Vec::with_capacity(appends.len());
        for (i, a) in appends.iter().enumerate() {
            let extra_output = match a.extra_output.as_deref().map(str::trim) {
                Some(text) if !text.is_empty() => Some(
                    OutputTemplate::parse(text)
                        .map_err(|e| format!("append_output[{i}].extra_output: {e}"))?,
                ),
                _ => None,
            };
            let mut fields = Vec::new();
            for (j, f) in a.extra_fields.iter().enumerate() {
                let at = |e: egret_rules::TemplateError| {
                    format!("append_output[{i}].extra_fields[{j}]: {e}")
                };
                match f {
                    ExtraField::Name(name) => {
                        let t = OutputTemplate::field(name).map_err(at)?;
                        fields.push((Arc::from(name.trim()), t, true));
                    }
                    ExtraField::Templated(map) => {
                        if map.len() != 1 {
                            return Err(format!(
                                "append_output[{i}].extra_fields[{j}]: one `key: template` per entry"
                            ));
                        }
                        for (key, text) in map {
                            if key.trim().is_empty() {
                                return Err(format!(
                                    "append_output[{i}].extra_fields[{j}]: empty key"
                                ));
                            }
                            let t = OutputTemplate::parse(text).map_err(at)?;
                            fields.push((Arc::from(key.as_str()), t, false));
                        }
                    }
                }
            }
            entries.push(Compiled {
                source: a.matching.source.clone(),
                tags: a.matching.tags.clone(),
                rule: a.matching.rule.clone(),
                extra_output,
                fields,
            });
        }
        for key in custom.keys() {
            if key.trim().is_empty() {
                return Err("custom_fields: empty key".into());
            }
        }
        Ok(Additions {
            entries,
            custom: custom
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), serde_json::Value::String(v.clone())))
                .collect(),
        })
    }

    /// The most fields [`apply`](Self::apply) adds to an alert (extra
    /// outputs' own fields not counted), to size `output_fields` once.
    pub fn max_fields(&self) -> usize {
        self.entries.iter().map(|e| e.fields.len()).sum::<usize>() + self.custom.len()
    }

    /// Static custom fields, for outputs that make labels of them.
    pub fn custom_fields(&self) -> &[(Arc<str>, serde_json::Value)] {
        &self.custom
    }

    /// What [`apply`](Self::apply) would add to the alerts of one rule
    /// (name, tags, source, the keys its template renders in order),
    /// worked out once: [`FieldPlan`]. `None` when an entry that matches
    /// has an `extra_output`, whose fields come from rendering text; those
    /// alerts take `apply`.
    pub fn plan(
        &self,
        rule: &Arc<str>,
        tags: &[Arc<str>],
        source: &str,
        rendered: &[Arc<str>],
    ) -> Option<FieldPlan> {
        let mut slots: Vec<(Arc<str>, Slot)> = rendered
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), Slot::Rendered(i)))
            .collect();
        let present =
            |slots: &[(Arc<str>, Slot)], key: &str| slots.iter().any(|(k, _)| &**k == key);
        for (e, entry) in self.entries.iter().enumerate() {
            if !entry.matches(source, rule, tags) {
                continue;
            }
            if entry.extra_output.is_some() {
                return None;
            }
            for (f, (key, _, _)) in entry.fields.iter().enumerate() {
                if !present(&slots, key) {
                    slots.push((key.clone(), Slot::Added { entry: e, field: f }));
                }
            }
        }
        for (c, (key, _)) in self.custom.iter().enumerate() {
            if !present(&slots, key) {
                slots.push((key.clone(), Slot::Custom(c)));
            }
        }
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        Some(FieldPlan {
            rule: rule.clone(),
            rendered: rendered.len(),
            slots,
        })
    }

    /// `output_fields` of an alert of the plan's rule: the rendered fields
    /// (in the template's key order, as the rule renders them) and what
    /// [`apply`](Self::apply) would add, as `apply` would add them, without
    /// a sort or a search. `Err` gives `rendered` back when it does not
    /// have the plan's shape (then use `apply`).
    pub fn fill<E: Event + ?Sized>(
        &self,
        plan: &FieldPlan,
        mut rendered: Vec<(Arc<str>, serde_json::Value)>,
        event: &E,
    ) -> Result<OutputFields, Vec<(Arc<str>, serde_json::Value)>> {
        // Checked before any value is moved out, so `Err` hands back the
        // rendered fields whole. Template keys are shared `Arc`s: the same
        // address means the same slot.
        let same_shape = rendered.len() == plan.rendered
            && plan.slots.iter().all(|(key, slot)| match *slot {
                Slot::Rendered(i) => rendered.get(i).is_some_and(|(k, _)| Arc::ptr_eq(k, key)),
                _ => true,
            });
        if !same_shape {
            return Err(rendered);
        }
        let mut fields = Vec::with_capacity(plan.slots.len());
        for (key, slot) in &plan.slots {
            let value = match *slot {
                Slot::Rendered(i) => rendered
                    .get_mut(i)
                    .map_or(serde_json::Value::Null, |(_, v)| std::mem::take(v)),
                Slot::Added { entry, field } => {
                    match self.entries.get(entry).and_then(|e| e.fields.get(field)) {
                        // A named field keeps its typed value; a template its text.
                        Some((_, t, true)) => t.value(event),
                        Some((_, t, false)) => serde_json::Value::String(t.render(event).0),
                        None => serde_json::Value::Null,
                    }
                }
                Slot::Custom(c) => self
                    .custom
                    .get(c)
                    .map_or(serde_json::Value::Null, |(_, v)| v.clone()),
            };
            fields.push((key.clone(), value));
        }
        Ok(OutputFields::from_sorted(fields))
    }

    /// Adds what matches `alert` (whose rule carries `tags`); a field the
    /// rule's own output already names keeps the rule's value.
    pub fn apply<E: Event + ?Sized>(&self, alert: &mut Alert, event: &E) {
        for entry in &self.entries {
            if !entry.matches(alert.source, &alert.rule, &alert.tags) {
                continue;
            }
            if let Some(t) = &entry.extra_output {
                let (text, fields) = t.render(event);
                if !alert.output.is_empty() {
                    alert.output.push(' ');
                }
                alert.output.push_str(&text);
                for (k, v) in fields {
                    alert.output_fields.insert_if_absent(&k, || v);
                }
            }
            for (key, t, typed) in &entry.fields {
                // A named field keeps its typed value; a template its text.
                alert.output_fields.insert_if_absent(key, || {
                    if *typed {
                        t.value(event)
                    } else {
                        serde_json::Value::String(t.render(event).0)
                    }
                });
            }
        }
        for (k, v) in &self.custom {
            alert.output_fields.insert_if_absent(k, || v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_falco_shape() {
        let alert = Alert {
            time: "2026-01-01T00:00:00.000000001Z".into(),
            rule: "R".into(),
            priority: Priority::Warning,
            output: "out".into(),
            output_fields: [(Arc::from("fd.sip"), serde_json::Value::Null)].into(),
            tags: vec![Arc::from("network")].into(),
            source: "syscall",
            hostname: "node-1".into(),
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["priority"], "Warning");
        assert_eq!(json["output_fields"]["fd.sip"], serde_json::Value::Null);
        assert_eq!(json["tags"][0], "network");
    }

    fn seed_alert() -> Alert {
        Alert {
            time: "2026-01-01T00:00:00.000000001Z".into(),
            rule: "Outbound Connection in Container".into(),
            priority: Priority::Warning,
            output: "Container outbound connection".into(),
            output_fields: [(Arc::from("fd.name"), serde_json::json!("203.0.113.7:443"))].into(),
            tags: vec![Arc::from("network"), Arc::from("outbound")].into(),
            source: "syscall",
            hostname: "node-1".into(),
        }
    }

    #[test]
    fn default_adds_the_workload_to_every_alert() {
        let add = Additions::build(&AppendOutputs::default().0, &BTreeMap::new()).unwrap();
        let ev = egret_rules::TestEvent::connect("203.0.113.7".parse().unwrap(), 443).in_pod(
            "shop",
            "web-1",
            "nginx:1.27",
        );
        let mut alert = seed_alert();
        add.apply(&mut alert, &ev);
        let f = &alert.output_fields;
        assert_eq!(f["k8s.pod.name"], "web-1");
        assert_eq!(f["k8s.ns.name"], "shop");
        assert_eq!(f["container.id"], "0123456789ab");
        assert_eq!(f["container.image.repository"], "nginx");
        assert_eq!(f["fd.name"], "203.0.113.7:443");
        assert_eq!(alert.output, "Container outbound connection");
    }

    #[test]
    fn matching_extra_output_templated_and_custom_fields() {
        let appends: Vec<AppendOutput> = serde_yaml_ng::from_str(
            "
- match: {source: syscall, tags: [network]}
  extra_output: 'pod=%k8s.pod.name'
  extra_fields: [proc.pid, {where: '%k8s.ns.name/%k8s.pod.name'}]
- match: {rule: Some other rule}
  extra_output: never
- match: {tags: [network, missing]}
  extra_output: never
",
        )
        .unwrap();
        let custom: BTreeMap<String, String> =
            [("cluster".to_owned(), "prod-eu".to_owned())].into();
        let add = Additions::build(&appends, &custom).unwrap();
        let ev = egret_rules::TestEvent::connect("203.0.113.7".parse().unwrap(), 443).in_pod(
            "shop",
            "web-1",
            "nginx:1.27",
        );
        let mut alert = seed_alert();
        add.apply(&mut alert, &ev);
        assert_eq!(alert.output, "Container outbound connection pod=web-1");
        assert_eq!(alert.output_fields["k8s.pod.name"], "web-1");
        assert!(alert.output_fields["proc.pid"].is_u64());
        assert_eq!(alert.output_fields["where"], "shop/web-1");
        assert_eq!(alert.output_fields["cluster"], "prod-eu");
        assert!(!alert.output.contains("never"));
    }

    /// The per-rule plan gives exactly what sorting and `apply` give.
    #[test]
    fn planned_fields_equal_applied_ones() {
        let ev = egret_rules::TestEvent::connect("203.0.113.7".parse().unwrap(), 443).in_pod(
            "shop",
            "web-1",
            "nginx:1.27",
        );
        let templated: Vec<AppendOutput> = serde_yaml_ng::from_str(
            "
- match: {tags: [network]}
  extra_fields: [proc.pid, fd.name, {where: '%k8s.ns.name/%k8s.pod.name'}]
- extra_fields: [k8s.pod.name, proc.pid, user.name]
- match: {rule: Some other rule}
  extra_fields: [container.name]
",
        )
        .unwrap();
        let custom: BTreeMap<String, String> = [
            ("cluster".to_owned(), "prod-eu".to_owned()),
            ("fd.name".to_owned(), "shadowed".to_owned()),
        ]
        .into();
        let configs = [
            Additions::build(&AppendOutputs::default().0, &BTreeMap::new()).unwrap(),
            Additions::build(&templated, &custom).unwrap(),
            Additions::build(&[], &custom).unwrap(),
            Additions::default(),
        ];
        let template = OutputTemplate::parse(
            "to %fd.name by %proc.cmdline (%user.name) pod %k8s.pod.name %fd.name",
        )
        .unwrap();
        for add in &configs {
            let seed = seed_alert();
            let (output, rendered) = template.render(&ev);
            let plan = add
                .plan(&seed.rule, &seed.tags, seed.source, template.keys())
                .expect("no extra_output: a plan");
            let planned = add.fill(&plan, rendered.clone(), &ev).unwrap();
            let mut applied = Alert {
                output,
                output_fields: OutputFields::from_distinct(rendered, add.max_fields()),
                ..seed
            };
            add.apply(&mut applied, &ev);
            assert_eq!(planned, applied.output_fields);
            assert_eq!(
                serde_json::to_string(&planned).unwrap(),
                serde_json::to_string(&applied.output_fields).unwrap()
            );
            // Rendered fields of another shape are handed back whole.
            let (_, mut other) = template.render(&ev);
            other.swap(0, 1);
            let expected = other.clone();
            assert_eq!(add.fill(&plan, other, &ev).unwrap_err(), expected);
            assert!(add.fill(&plan, Vec::new(), &ev).is_err());
        }
        let with_text: Vec<AppendOutput> =
            serde_yaml_ng::from_str("- extra_output: 'pod=%k8s.pod.name'").unwrap();
        let add = Additions::build(&with_text, &BTreeMap::new()).unwrap();
        let seed = seed_alert();
        assert!(
            add.plan(&seed.rule, &seed.tags, seed.source, template.keys())
                .is_none()
        );
    }

    #[test]
    fn bad_entries_name_their_place() {
        let bad: Vec<AppendOutput> =
            serde_yaml_ng::from_str("- extra_fields: [container.id, proc.sname]").unwrap();
        let err = Additions::build(&bad, &BTreeMap::new()).unwrap_err();
        assert!(
            err.starts_with("append_output[0].extra_fields[1]:"),
            "{err}"
        );
        assert!(err.contains("proc.sname"), "{err}");
        let bad: Vec<AppendOutput> =
            serde_yaml_ng::from_str("- extra_output: 'x %nope.x'").unwrap();
        assert!(Additions::build(&bad, &BTreeMap::new()).is_err());
        assert!(serde_yaml_ng::from_str::<Vec<AppendOutput>>("- matches: {}").is_err());
    }
}
