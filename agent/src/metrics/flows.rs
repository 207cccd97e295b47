//! Flow metrics: bytes out (and in) by namespace and workload towards each
//! destination class, flow records by protocol and end, and flow records
//! whose owner was unknown.
//!
//! Bounded: the first [`WORKLOAD_SERIES`] distinct (namespace, workload)
//! pairs seen get their own series, later ones are folded into
//! `namespace="other", workload="other"` (a counter never disappears, so
//! there is no eviction to reset it). The destination class has three
//! values and the direction two: at most 6 × 501 series.
use std::net::IpAddr;

use std::sync::{Arc, Mutex};

use egret_common::FlowCounters;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family},
    registry::Registry,
};

use crate::pipeline::{decode::FlowEnd, enrich::Event};
use crate::sync::lock;

/// Most (namespace, workload) pairs with their own series.
pub const WORKLOAD_SERIES: usize = 500;

type BytesLabels = [(&'static str, String); 4];

pub(super) struct FlowMetrics {
    bytes: Family<BytesLabels, Counter>,
    records: Family<[(&'static str, &'static str); 2], Counter>,
    owner_unknown: Counter,
    workloads: std::sync::Mutex<std::collections::HashSet<String>>,
    kernel: KernelFlowCounters,
}

type Reader = Box<dyn Fn() -> Option<FlowCounters> + Send + Sync>;

/// The kernel's flow counters (`EGRET_FLOW_COUNTERS`), read at each scrape.
#[derive(Clone, Default)]
struct KernelFlowCounters(Arc<Mutex<Option<Reader>>>);

impl std::fmt::Debug for KernelFlowCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelFlowCounters")
    }
}

impl Collector for KernelFlowCounters {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(c) = lock(&self.0).as_ref().and_then(|read| read()) else {
            return Ok(());
        };
        let untracked = [
            ("tcp_table_full", c.tcp_table_full),
            ("udp_table_full", c.udp_table_full),
            ("cb_flags_failed", c.cb_flags_failed),
        ];
        let mut metric = enc.encode_descriptor(
            "egret_kernel_flow_untracked",
            "Flows the kernel could not account, by reason (the flow table of 65536 live flows was full, for TCP its slot too; the TCP callbacks could not be enabled)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in untracked {
            let labels = [("reason", reason)];
            ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
        }
        let singles = [
            (
                "egret_kernel_flow_state_lost",
                "TCP flows that ended without their kernel state (no start time)",
                c.tcp_state_lost,
            ),
            (
                "egret_kernel_flow_interim",
                "Interim flow records the kernel sent",
                c.interim,
            ),
            (
                "egret_kernel_flow_slot_taken",
                "Tracked TCP connections whose state slot held a live flow (kept in the flow table instead)",
                c.tcp_slot_taken,
            ),
        ];
        for (name, help, n) in singles {
            let metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(metric)?;
        }
        Ok(())
    }
}

/// Where a flow went, for dashboards: `cluster_dns` is port 53 on a
/// private address (the node's or cluster's resolver), `private` any other
/// private, loopback, link-local or unique-local address, `external` the
/// rest.
pub fn destination_class(ip: IpAddr, port: u16) -> &'static str {
    let private = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return destination_class(IpAddr::V4(v4), port),
            None => {
                let s = v6.segments();
                v6.is_loopback() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
            }
        },
    };
    match (private, port) {
        (true, 53) => "cluster_dns",
        (true, _) => "private",
        (false, _) => "external",
    }
}

/// `workload`: the pod's `app.kubernetes.io/name` or `app` label, else its
/// container's name; `host` outside containers, `unknown` unresolved.
fn workload(event: &Event) -> (String, String) {
    let meta = event.identity.as_ref().and_then(|i| i.metadata());
    let pod = meta.and_then(|m| m.pod.as_ref());
    let namespace = pod.and_then(|p| p.namespace.clone()).unwrap_or_default();
    let workload = pod
        .and_then(|p| {
            p.labels
                .get("app.kubernetes.io/name")
                .or_else(|| p.labels.get("app"))
                .cloned()
        })
        .or_else(|| meta.map(|m| m.name.clone()))
        .unwrap_or_else(|| match event.container_id() {
            Some("host") => "host".to_owned(),
            _ => "unknown".to_owned(),
        });
    (namespace, workload)
}

impl FlowMetrics {
    pub(super) fn new() -> Self {
        FlowMetrics {
            bytes: Family::default(),
            records: Family::default(),
            owner_unknown: Counter::default(),
            workloads: std::sync::Mutex::default(),
            kernel: KernelFlowCounters::default(),
        }
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "egret_flow_bytes",
            "Payload bytes of outbound flows, by direction, namespace, workload and destination class (external, private, cluster_dns)",
            self.bytes.clone(),
        );
        r.register(
            "egret_flow_records",
            "Flow records (ends and interim reports) by protocol and end",
            self.records.clone(),
        );
        r.register_collector(Box::new(self.kernel.clone()));
        r.register(
            "egret_flow_owner_unknown",
            "Flow records whose connect event was not seen or no longer remembered: no process or container fields",
            self.owner_unknown.clone(),
        );
        // The host's series exist from the start (at 0), so dashboards and
        // queries see the family before the first flow moves bytes.
        for direction in ["out", "in"] {
            for class in ["external", "private", "cluster_dns"] {
                drop(self.bytes.get_or_create(&[
                    ("direction", direction.to_owned()),
                    ("namespace", String::new()),
                    ("workload", "host".to_owned()),
                    ("destination_class", class.to_owned()),
                ]));
            }
        }
        for proto in ["tcp", "udp"] {
            for end in FlowEnd::ALL {
                drop(
                    self.records
                        .get_or_create(&[("protocol", proto), ("end", end.as_str())]),
                );
            }
        }
    }

    pub(super) fn set_kernel_reader(&self, reader: Reader) {
        *lock(&self.kernel.0) = Some(reader);
    }

    pub(super) fn owner_unknown(&self) {
        self.owner_unknown.inc();
    }

    pub(super) fn observe(&self, event: &Event) {
        let Some(flow) = event.attempt.flow.as_deref() else {
            return;
        };
        let a = &event.attempt;
        self.records
            .get_or_create(&[("protocol", a.l4proto.as_str()), ("end", flow.end.as_str())])
            .inc();
        if flow.delta_out == 0 && flow.delta_in == 0 {
            return;
        }
        let (namespace, workload) = workload(event);
        let key = format!("{namespace}/{workload}");
        let (namespace, workload) = {
            let mut shown = lock(&self.workloads);
            if shown.contains(&key) || shown.len() < WORKLOAD_SERIES {
                shown.insert(key);
                (namespace, workload)
            } else {
                (
                    super::table::OTHER.to_owned(),
                    super::table::OTHER.to_owned(),
                )
            }
        };
        let class = destination_class(a.daddr, a.dport);
        for (direction, n) in [("out", flow.delta_out), ("in", flow.delta_in)] {
            if n == 0 {
                continue;
            }
            self.bytes
                .get_or_create(&[
                    ("direction", direction.to_owned()),
                    ("namespace", namespace.clone()),
                    ("workload", workload.clone()),
                    ("destination_class", class.to_owned()),
                ])
                .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let c = |ip: &str, port| destination_class(ip.parse().unwrap(), port);
        assert_eq!(c("10.96.0.10", 53), "cluster_dns");
        assert_eq!(c("10.1.2.3", 443), "private");
        assert_eq!(c("100.64.0.1", 443), "private");
        assert_eq!(c("::ffff:192.168.1.1", 80), "private");
        assert_eq!(c("fd00::1", 80), "private");
        assert_eq!(c("198.51.100.7", 53), "external");
        assert_eq!(c("2001:db8::1", 443), "external");
    }
}
