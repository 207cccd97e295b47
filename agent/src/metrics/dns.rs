//! Observed-DNS metrics: messages by direction, malformed messages by
//! reason, the names cache, and queries per (namespace, parent domain).
//!
//! The per-domain family is bounded: at most [`DOMAIN_SERIES`] (namespace,
//! domain) pairs get a series, the first ones seen; later pairs are counted
//! under `domain="other"` of their namespace (namespaces go through the
//! [`NS_OTHER_SERIES`] namespaces; past them `k8s_ns_name="other"` too), and every fold is counted
//! in `egret_dns_domain_folds_total`. A top-N by volume would need the
//! counts of every pair, which is the unbounded table this avoids.
use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    pipeline::{
        decode::{DnsDirection, dns::Malformed},
        enrich::names::NamesStats,
    },
    sync::lock,
};

/// Series of `egret_dns_queries_by_domain_total`.
pub const DOMAIN_SERIES: usize = 500;
/// Extra `domain="other"` series, one per namespace, past the cap; beyond
/// them everything is `k8s_ns_name="other", domain="other"`.
pub const NS_OTHER_SERIES: usize = 64;

type Label = [(&'static str, &'static str); 1];
type DomainLabels = [(&'static str, String); 2];

#[derive(Default)]
pub struct DnsMetrics {
    messages: Family<Label, Counter>,
    malformed: Family<Label, Counter>,
    domains: Family<DomainLabels, Counter>,
    domain_keys: Mutex<HashSet<(String, String)>>,
    domain_folds: Counter,
    names_entries: Gauge,
    names_evictions: Counter,
    names_expired: Counter,
    scope_resets: Counter,
    last_evictions: AtomicU64,
    last_expired: AtomicU64,
    last_resets: AtomicU64,
}

impl DnsMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        for direction in [DnsDirection::Query, DnsDirection::Answer] {
            drop(
                self.messages
                    .get_or_create(&[("direction", direction.as_str())]),
            );
        }
        for reason in Malformed::ALL {
            drop(self.malformed.get_or_create(&[("reason", reason.as_str())]));
        }
        r.register(
            "egret_dns_messages",
            "DNS messages parsed from the kernel's DNS capture, by direction",
            self.messages.clone(),
        );
        r.register(
            "egret_dns_malformed",
            "DNS messages that could not be parsed (never evaluated), by reason",
            self.malformed.clone(),
        );
        r.register(
            "egret_dns_queries_by_domain",
            "DNS queries by namespace and parent domain (last two labels); capped, excess under other",
            self.domains.clone(),
        );
        r.register(
            "egret_dns_domain_folds",
            "DNS queries counted under other because the per-domain family was full",
            self.domain_folds.clone(),
        );
        r.register(
            "egret_dns_names_cache_entries",
            "(scope, IP) entries in the observed-DNS names cache",
            self.names_entries.clone(),
        );
        r.register(
            "egret_dns_names_cache_evictions",
            "Names cache entries evicted because the cache was full",
            self.names_evictions.clone(),
        );
        r.register(
            "egret_dns_names_cache_expired",
            "Names dropped from the cache because their TTL ran out",
            self.names_expired.clone(),
        );
        r.register(
            "egret_dns_scope_resets",
            "Times the per-workload DNS rate table was full and reset",
            self.scope_resets.clone(),
        );
    }

    pub fn malformed(&self, reason: Malformed) {
        self.malformed
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// One parsed message; queries also count per (namespace, domain).
    pub fn message(&self, direction: DnsDirection, namespace: Option<&str>, parent: &str) {
        self.messages
            .get_or_create(&[("direction", direction.as_str())])
            .inc();
        if direction != DnsDirection::Query {
            return;
        }
        let ns = namespace.unwrap_or("");
        let key = (ns.to_string(), parent.to_string());
        let labels = {
            let mut keys = lock(&self.domain_keys);
            if keys.contains(&key) {
                key
            } else if keys.len() < DOMAIN_SERIES {
                keys.insert(key.clone());
                key
            } else {
                self.domain_folds.inc();
                let ns_other = (key.0, "other".to_string());
                if keys.contains(&ns_other) || keys.len() < DOMAIN_SERIES + NS_OTHER_SERIES {
                    keys.insert(ns_other.clone());
                    ns_other
                } else {
                    ("other".to_string(), "other".to_string())
                }
            }
        };
        self.domains
            .get_or_create(&[("k8s_ns_name", labels.0), ("domain", labels.1)])
            .inc();
    }

    pub fn names_cache(&self, stats: NamesStats, scope_resets: u64) {
        self.names_entries.set(stats.entries as i64);
        let delta =
            |last: &AtomicU64, now: u64| now.saturating_sub(last.swap(now, Ordering::Relaxed));
        self.names_evictions
            .inc_by(delta(&self.last_evictions, stats.evictions));
        self.names_expired
            .inc_by(delta(&self.last_expired, stats.expired));
        self.scope_resets
            .inc_by(delta(&self.last_resets, scope_resets));
    }
}
