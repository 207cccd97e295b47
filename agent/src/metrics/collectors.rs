//! Metrics computed at scrape time: the capped alert families, kernel
//! counters, queue depths, per-verdict totals, the process and the build.
use std::{fmt, sync::Arc};

use egret_common::{Hook, HookCounters};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use super::{HOOKS, Shared, Verdict, lock};

pub(super) struct Everything {
    shared: Arc<Shared>,
}

impl fmt::Debug for Everything {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Everything")
    }
}

impl Everything {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Everything { shared }
    }
}

const ALERT_LABELS: [&str; 7] = [
    "rule",
    "priority",
    "source",
    "tags",
    "k8s_ns_name",
    "k8s_pod_name",
    "container_name",
];
const DESTINATION_LABELS: [&str; 7] = [
    "rule",
    "dest_ip",
    "dest_port",
    "proc_name",
    "container_name",
    "k8s_ns_name",
    "k8s_pod_name",
];
const FALCO_LABELS: [&str; 3] = ["rule_name", "priority", "source"];

/// One family: descriptor, then one sample per label set.
fn family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in rows {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}

fn labelled<'a, const N: usize>(
    names: &'a [&'static str; N],
    values: &'a [Box<str>; N],
) -> [(&'static str, &'a str); N] {
    std::array::from_fn(|i| (names[i], &*values[i]))
}

impl Collector for Everything {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_alerts(&mut enc)?;
        self.encode_verdicts_and_kernel(&mut enc)?;
        self.encode_queues(&mut enc)?;
        encode_process(&mut enc)?;
        family(
            &mut enc,
            "egret_build_info",
            "Always 1; the labels describe the running build",
            None,
            MetricType::Gauge,
            [([("version", env!("CARGO_PKG_VERSION"))], 1)],
        )
    }
}

impl Everything {
    fn encode_alerts(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let st = self.shared.alerts();
        family(
            enc,
            "egret_alerts",
            "Alerts fired, by rule and workload (workload labels capped; excess shown as other)",
            None,
            MetricType::Counter,
            st.alerts
                .iter()
                .map(|(values, n)| (labelled(&ALERT_LABELS, values), n)),
        )?;
        family(
            enc,
            "egret_destination_alerts",
            "Alerts by destination, process and container (capped family, least recently updated series evicted)",
            None,
            MetricType::Counter,
            st.destinations
                .iter()
                .map(|(values, n)| (labelled(&DESTINATION_LABELS, values), n)),
        )?;
        if let Some(falco) = &st.falco {
            family(
                enc,
                "falcosecurity_falco_rules_matches",
                "Falco-compatible rule match counter (priority is Falco's number, 0 Emergency .. 7 Debug)",
                None,
                MetricType::Counter,
                falco
                    .iter()
                    .map(|(values, n)| (labelled(&FALCO_LABELS, values), n)),
            )?;
        }
        let mut tables = vec![
            (
                "egret_alerts",
                st.alerts.len(),
                st.alerts.cap(),
                st.alerts.evictions(),
            ),
            (
                "egret_destination_alerts",
                st.destinations.len(),
                st.destinations.cap(),
                st.destinations.evictions(),
            ),
        ];
        if let Some(falco) = &st.falco {
            tables.push((
                "falcosecurity_falco_rules_matches",
                falco.len(),
                falco.cap(),
                falco.evictions(),
            ));
        }
        let label = |name: &'static str| [("family", name)];
        family(
            enc,
            "egret_metrics_series",
            "Series currently held by a capped family",
            None,
            MetricType::Gauge,
            tables.iter().map(|t| (label(t.0), t.1 as u64)),
        )?;
        family(
            enc,
            "egret_metrics_series_limit",
            "Most series a capped family holds",
            None,
            MetricType::Gauge,
            tables.iter().map(|t| (label(t.0), t.2 as u64)),
        )?;
        family(
            enc,
            "egret_metrics_series_evictions",
            "Series evicted from a capped family to make room for a new one",
            None,
            MetricType::Counter,
            tables.iter().map(|t| (label(t.0), t.3)),
        )?;
        family(
            enc,
            "egret_metrics_label_overflow",
            "Observations whose label value was shown as other because the label's distinct values were capped",
            None,
            MetricType::Counter,
            [
                ("k8s_ns_name", st.ns.folded()),
                ("k8s_pod_name", st.pod.folded()),
                ("container_name", st.container.folded()),
            ]
            .map(|(l, n)| ([("family", "egret_alerts"), ("label", l)], n)),
        )
    }

    fn encode_verdicts_and_kernel(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let (kernel, read_errors) = {
            let mut view = lock(&self.shared.kernel);
            if let Some(reader) = &view.reader {
                match reader() {
                    Some(c) => view.last = Some(c),
                    None => view.read_errors += 1,
                }
            }
            (view.last, view.read_errors)
        };
        let mut verdicts: Vec<(&str, u64)> = Verdict::ALL
            .iter()
            .map(|v| {
                let n =
                    self.shared.verdicts[*v as usize].load(std::sync::atomic::Ordering::Relaxed);
                (v.as_str(), n)
            })
            .collect();
        if let Some(k) = &kernel {
            // Egress hooks only: other slots (exec) count process records.
            let egress = || Hook::EGRESS.iter().filter_map(|h| k.get(*h as usize));
            verdicts.push(("ignored_in_kernel", egress().map(|c| c.ignored).sum()));
            verdicts.push(("lost_in_kernel", egress().map(|c| c.ringbuf_full).sum()));
        }
        family(
            enc,
            "egret_egress_events",
            "Outbound connection attempts, by what became of them",
            None,
            MetricType::Counter,
            verdicts.into_iter().map(|(v, n)| ([("verdict", v)], n)),
        )?;
        family(
            enc,
            "egret_kernel_map_read_errors",
            "Scrapes that could not read the kernel counters",
            None,
            MetricType::Counter,
            [([("map", "EGRET_COUNTERS")], read_errors)],
        )?;
        type Field = fn(&HookCounters) -> u64;
        let per_hook: [(&str, &str, Field); 5] = [
            ("egret_kernel_seen", "Invocations of the kernel hook", |c| {
                c.seen
            }),
            (
                "egret_kernel_ignored",
                "Attempts dropped in the kernel because the destination is ignored",
                |c| c.ignored,
            ),
            (
                "egret_kernel_emitted",
                "Events the kernel hook submitted to the ring buffer",
                |c| c.emitted,
            ),
            (
                "egret_kernel_ringbuf_drops",
                "Events lost because the ring buffer was full",
                |c| c.ringbuf_full,
            ),
            (
                "egret_kernel_repeat_of_connect",
                "Sends to a destination already reported (the connected UDP peer; a raw or ping socket's recent destination), counted but not emitted",
                |c| c.repeat_of_connect,
            ),
        ];
        for (name, help, get) in per_hook {
            // Every hook, exec included: its ring buffer drops matter too
            // (reserved slots without a hook are not series).
            let rows = kernel.iter().flat_map(|k: &[HookCounters; HOOKS]| {
                Hook::ALL.iter().filter_map(move |hook| {
                    let c = k.get(*hook as usize)?;
                    Some(([("hook", hook.name())], get(c)))
                })
            });
            family(enc, name, help, None, MetricType::Counter, rows)?;
        }
        Ok(())
    }

    fn encode_queues(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut queues = lock(&self.shared.queues);
        // A queue whose channel is gone stops being reported.
        let mut rows = Vec::with_capacity(queues.len());
        queues.retain(|(name, probe)| match probe() {
            Some((depth, cap)) => {
                rows.push((name.clone(), depth as u64, cap as u64));
                true
            }
            None => false,
        });
        drop(queues);
        family(
            enc,
            "egret_queue_depth",
            "Items waiting in a pipeline queue",
            None,
            MetricType::Gauge,
            rows.iter().map(|(n, d, _)| ([("queue", n.as_str())], *d)),
        )?;
        family(
            enc,
            "egret_queue_capacity",
            "Capacity of a pipeline queue",
            None,
            MetricType::Gauge,
            rows.iter().map(|(n, _, c)| ([("queue", n.as_str())], *c)),
        )
    }
}

/// CPU time, resident memory and start time from procfs, under the names
/// every Prometheus client library uses.
fn encode_process(enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let Some(p) = ProcessStats::read() else {
        return Ok(());
    };
    let cpu = enc.encode_descriptor(
        "process_cpu",
        "User and system CPU time spent by the agent",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?;
    ConstCounter::new(p.cpu_seconds).encode(cpu)?;
    let rss = enc.encode_descriptor(
        "process_resident_memory",
        "Resident set size of the agent",
        Some(&Unit::Bytes),
        MetricType::Gauge,
    )?;
    ConstGauge::new(p.rss_bytes).encode(rss)?;
    let start = enc.encode_descriptor(
        "process_start_time",
        "Start time of the agent since the Unix epoch",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?;
    ConstGauge::new(p.start_time_seconds).encode(start)
}

#[derive(Debug, PartialEq)]
pub(super) struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: i64,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        Self::parse(&stat, &statm, &proc_stat, ticks, page)
    }

    pub(super) fn parse(
        stat: &str,
        statm: &str,
        proc_stat: &str,
        ticks_per_sec: i64,
        page_size: i64,
    ) -> Option<Self> {
        if ticks_per_sec <= 0 || page_size <= 0 {
            return None;
        }
        // The command name is in parentheses and may itself contain spaces
        // and parentheses, so fields are counted from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields after ')' start at field 3 (state): utime is 14, stime 15,
        // starttime 22 in proc(5) numbering.
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let ticks = ticks_per_sec as f64;
        let cpu_seconds = (field(14)? + field(15)?) as f64 / ticks;
        let rss_pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let boot: u64 = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(ProcessStats {
            cpu_seconds,
            rss_bytes: rss_pages.saturating_mul(page_size),
            start_time_seconds: boot as f64 + field(22)? as f64 / ticks,
        })
    }
}
