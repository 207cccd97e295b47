#!/usr/bin/env bash
# Where the CPU goes in scenario 2's 4-process alert storm (BENCHMARKS.md §2):
# perf samples every CPU (cpu-clock: this VM has no hardware counters) while
# 4 connect loops run with no monitor, then with Egret (bench rule, alerts
# read through a pipe as `cargo xtask bench` does), and prints each run's
# samples by process class and, for the Egret run, the heaviest symbols of
# the loops' kernel side and of the agent. Run as root after
# `cargo xtask bench` (or `cargo build --release -p egret -p egret-probe`).
# Everything stays on this machine: a throwaway network namespace with
# TEST-NET addresses (198.51.100.1 is refused there: the attempt alerts).
#   N   connects per loop (default 12500)
set -euo pipefail
W=$(cd "$(dirname "$0")/.." && pwd)
BIN=$W/target/release
N=${N:-12500}
NS=egret-pstorm-$$
T=$(mktemp -d)
AG=
JIT=$(sysctl -n net.core.bpf_jit_kallsyms)
cleanup() {
  [ -n "$AG" ] && kill "$AG" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  sysctl -qw net.core.bpf_jit_kallsyms="$JIT"
  rm -rf "$T"
}
trap cleanup EXIT
command -v perf >/dev/null || { echo "perf is not installed (Debian: linux-perf)" >&2; exit 1; }
# BPF programs appear in the profile under their own names.
sysctl -qw net.core.bpf_jit_kallsyms=1
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add v0 type veth peer name v1
ip -n "$NS" link set v0 up; ip -n "$NS" link set v1 up
ip -n "$NS" addr add 198.51.100.1/24 dev v0
ip netns exec "$NS" sysctl -qw net.ipv4.tcp_tw_reuse=1 "net.ipv4.ip_local_port_range=1024 65535"
cat > "$T/rule.yaml" <<'RULE'
- rule: Bench Connect
  desc: every connect to the benchmark's TEST-NET address
  condition: evt.type = connect and fd.sip = 198.51.100.1
  output: bench connect (connection=%fd.name port=%fd.sport pid=%proc.pid command=%proc.cmdline)
  priority: WARNING
  tags: [bench]
RULE

# The workload: 4 loops at once; prints their summed connects/s.
cat > "$T/loops.sh" <<LOOPS
for i in 1 2 3 4; do
  ip netns exec $NS $BIN/egret-probe connect-loop 198.51.100.1:0 $N > $T/rate.\$i &
done
wait
cat $T/rate.* | awk '{s += \$1} END {printf "%.0f", s}'
LOOPS

profile() { # $1: run name
  perf record -q -a -g -F 499 -o "$T/$1.data" -- bash "$T/loops.sh" > "$T/$1.rate" 2>/dev/null
  echo "## $1: $(cat "$T/$1.rate") connects/s (4 loops of $N)"
  # Samples by process: the loops (egret-probe), the agent's threads, the
  # kernel's softirq and worker threads, idle.
  perf report -q -i "$T/$1.data" --no-children --sort comm --stdio 2>/dev/null |
    awk '$1 ~ /%$/ && $1+0 >= 0.5 {printf "  %-8s %s\n", $1, $2}'
}

profile none
"$BIN/egret" run --rules "$T/rule.yaml" 2> "$T/agent.log" | wc -l > "$T/lines" &
for _ in $(seq 100); do grep -q "egret ready" "$T/agent.log" && break; sleep 0.1; done
AG=$(pgrep -f "$BIN/egret run --rules $T/rule.yaml" | head -1)
profile egret
# Both runs make the same 4 x N connects, so sample counts compare
# directly: what Egret adds to the same work, symbol by symbol.
echo "## the loops' extra samples with Egret, by symbol (same connects; 1 sample = $((1000000 / 499)) us)"
for run in none egret; do
  perf report -q -n -i "$T/$run.data" --no-children --comm egret-probe --sort sym --stdio 2>/dev/null |
    awk -v run=$run '$1 ~ /%$/ {n = $2; $1 = ""; $2 = ""; $3 = ""; sub(/^ +/, ""); print run "\t" n "\t" $0}'
done | python3 -c '
import collections, sys
runs = collections.defaultdict(lambda: [0, 0])
for line in sys.stdin:
    run, n, sym = line.rstrip("\n").split("\t")
    runs[sym][run == "egret"] += int(n)
total = [sum(v[i] for v in runs.values()) for i in (0, 1)]
print(f"  loops: {total[0]} samples without Egret, {total[1]} with (+{total[1] - total[0]})")
bpf = sum(v[1] - v[0] for s, v in runs.items() if "bpf_prog_" in s)
print(f"  of the extra: BPF programs {bpf}")
for sym, (a, b) in sorted(runs.items(), key=lambda kv: kv[1][0] - kv[1][1])[:20]:
    print(f"  {b - a:+6d}  {a:6d} -> {b:6d}  {sym}")
'
echo "## egret: the BPF programs' share of all samples"
perf report -q -i "$T/egret.data" --no-children --sort sym --stdio 2>/dev/null |
  awk '/bpf_prog_/ && $1 ~ /%$/ {s += $1; $2 = ""; printf "  %s\n", $0} END {printf "  total %.2f%%\n", s}' | head -20
echo "## egret: the agent's samples by thread and symbol"
perf report -q -i "$T/egret.data" --no-children --pid "$AG" --sort comm,dso,sym --stdio 2>/dev/null |
  awk '$1 ~ /%$/ && $1+0 >= 0.4 {printf "  %s\n", $0}' | head -30
kill "$AG"; wait 2>/dev/null || true; AG=
echo "## alerts written: $(cat "$T/lines") of $((4 * N))"
