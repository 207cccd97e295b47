//! The per-alert path: labels from the alert's event, capped through one
//! mutex, formatted without allocating.
use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::{
    Metrics,
    table::{LruSeries, ValueCap},
};
use crate::outputs::alert::{Alert, Priority};

/// Facts about an alert's event that label its series. Take them from the
/// enriched event when possible: `output_fields` only holds what the rule's
/// output template names. Empty means "does not apply" (e.g. a host process).
#[derive(Clone, Copy, Debug, Default)]
pub struct AlertContext<'a> {
    pub k8s_ns_name: &'a str,
    pub k8s_pod_name: &'a str,
    pub container_name: &'a str,
    /// Not a metric label (unbounded, meaningless to people); webhooks use
    /// it to tell identical alerts apart.
    pub container_id: &'a str,
    pub proc_name: &'a str,
    pub dest: Option<(IpAddr, u16)>,
}

impl<'a> AlertContext<'a> {
    /// Best effort from Falco field names in `output_fields` (`k8s.ns.name`,
    /// `k8s.pod.name`, `container.name`, `container.id`, `proc.name`,
    /// `fd.sip`, `fd.sport`).
    /// Test-only: the agent builds contexts from the event
    /// (`outputs::alert_context`).
    #[cfg(any(test, feature = "test-util"))]
    pub fn from_alert(alert: &'a Alert) -> Self {
        let text = |key: &str| {
            alert
                .output_fields
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or("")
        };
        let ip = text("fd.sip").parse::<IpAddr>().ok();
        let port = alert.output_fields.get("fd.sport").and_then(|v| {
            v.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        });
        AlertContext {
            k8s_ns_name: text("k8s.ns.name"),
            k8s_pod_name: text("k8s.pod.name"),
            container_name: text("container.name"),
            container_id: text("container.id"),
            proc_name: text("proc.name"),
            dest: ip.zip(port),
        }
    }
}

/// Per-alert state behind one mutex: the capped label values and the
/// families they feed.
pub(super) struct AlertState {
    pub(super) ns: ValueCap,
    pub(super) pod: ValueCap,
    pub(super) container: ValueCap,
    /// rule, priority, source, tags, k8s_ns_name, k8s_pod_name, container_name
    pub(super) alerts: LruSeries<7>,
    /// rule, dest_ip, dest_port, proc_name, container_name, k8s_ns_name, k8s_pod_name
    pub(super) destinations: LruSeries<7>,
    /// rule_name, priority (Falco's number), source
    pub(super) falco: Option<LruSeries<3>>,
    /// Joined tag lists keyed by the address of the rule's tag slice; the
    /// held `Arc` keeps that address from being reused while cached.
    pub(super) tags: TagCache,
}

const TAG_CACHE: usize = 1024;
/// Keyed by address, which no workload chooses: foldhash instead of
/// SipHash, whose two passes per alert were a tenth of `observe_alert`.
pub(super) type TagCache = HashMap<usize, (Arc<[Arc<str>]>, Box<str>), foldhash::fast::RandomState>;

impl Metrics {
    /// Records one alert. `ctx` labels the workload and destination series.
    pub fn observe_alert(&self, alert: &Alert, ctx: &AlertContext<'_>) {
        let now = self.shared.started.elapsed().as_secs();
        let mut ip_buf = [0u8; 48];
        let mut port_buf = [0u8; 8];
        let (ip, port) = match ctx.dest {
            Some((ip, port)) => (fmt_ip(&mut ip_buf, ip), fmt_u16(&mut port_buf, port)),
            None => ("", ""),
        };
        let mut guard = self.shared.alerts();
        let st = &mut *guard;
        let tags = joined_tags(&mut st.tags, &alert.tags);
        let ns = st.ns.resolve(ctx.k8s_ns_name, now);
        let pod = st.pod.resolve(ctx.k8s_pod_name, now);
        let container = st.container.resolve(ctx.container_name, now);
        st.alerts.add(
            [
                &alert.rule,
                alert.priority.as_str(),
                alert.source,
                tags,
                ns,
                pod,
                container,
            ],
            1,
        );
        if ip.is_empty() && ctx.proc_name.is_empty() && ctx.container_name.is_empty() {
            // Nothing would tell these series apart but the rule, which
            // egret_alerts_total already has.
        } else {
            st.destinations.add(
                [
                    &alert.rule,
                    ip,
                    port,
                    ctx.proc_name,
                    ctx.container_name,
                    ctx.k8s_ns_name,
                    ctx.k8s_pod_name,
                ],
                1,
            );
        }
        if let Some(falco) = &mut st.falco {
            falco.add(
                [&alert.rule, falco_priority(alert.priority), alert.source],
                1,
            );
        }
    }
}

/// Falco numbers priorities in its metrics: 0 Emergency .. 7 Debug.
fn falco_priority(p: Priority) -> &'static str {
    ["0", "1", "2", "3", "4", "5", "6", "7"][p as usize]
}

/// Formats into a stack buffer: the hot path must not allocate, and
/// `core::fmt` for an IPv4 address cost more than the rest of the
/// observation.
pub(super) fn fmt_ip(buf: &mut [u8; 48], ip: IpAddr) -> &str {
    match ip {
        IpAddr::V4(v4) => {
            let len = crate::numfmt::put_ipv4(&mut buf[..], v4);
            std::str::from_utf8(&buf[..len]).unwrap_or("")
        }
        IpAddr::V6(v6) => {
            let len = crate::numfmt::put_ipv6(&mut buf[..], v6);
            std::str::from_utf8(&buf[..len]).unwrap_or("")
        }
    }
}

pub(super) fn fmt_u16(buf: &mut [u8; 8], v: u16) -> &str {
    let len = crate::numfmt::put_decimal(&mut buf[..], v);
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

fn joined_tags<'c>(cache: &'c mut TagCache, tags: &Arc<[Arc<str>]>) -> &'c str {
    let key = Arc::as_ptr(tags).cast::<u8>() as usize;
    if cache.len() >= TAG_CACHE && !cache.contains_key(&key) {
        // Rules share one tag list each, so this only trips when something
        // builds a fresh list per alert; starting over keeps memory bounded.
        cache.clear();
    }
    &cache
        .entry(key)
        .or_insert_with(|| (tags.clone(), tags.join(",").into_boxed_str()))
        .1
}
