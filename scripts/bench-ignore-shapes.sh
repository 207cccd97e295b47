#!/usr/bin/env bash
# The ignored connect under each ignore-list shape of BENCHMARKS.md §6,
# measured on the same connects: four agents (one per shape) attached at
# once, so every connect runs all four connect4 (or connect6) programs,
# each with its own table; kernel.bpf_stats_enabled gives each program's ns
# per run. The agents start in four rotated orders (the first program on a
# connect pays for cold cache lines the others find warm), 5 rounds of N
# connects per destination each; the median per shape and destination is
# printed.
# Run as root after `cargo xtask bench` (or a release build of egret and
# egret-probe). Everything stays on this machine: a throwaway network
# namespace, destinations on its loopback.
#   N   connects per round (default 20000)
set -euo pipefail
W=$(cd "$(dirname "$0")/.." && pwd)
B=$W/target/release
N=${N:-20000}
NS=egret-shapes-$$
T=$(mktemp -d)
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled=0; rm -rf "$T"
}
trap cleanup EXIT
cat > "$T/s1.yaml" <<'R'
- rule: Bench Any Destination
  desc: can match any destination, so the rules add nothing to the list
  condition: evt.type = connect and proc.name = egret-bench-none
  output: never (pid=%proc.pid)
  priority: WARNING
R
cat > "$T/s2.yaml" <<'R'
- rule: Bench Outbound
  desc: external destinations only
  condition: evt.type = connect and not fd.snet in (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)
  output: out (connection=%fd.name pid=%proc.pid)
  priority: WARNING
R
cat > "$T/s3.yaml" <<'R'
- rule: Bench Connect
  desc: every connect to the benchmark's TEST-NET address
  condition: evt.type = connect and fd.sip = 198.51.100.1
  output: bench connect (connection=%fd.name)
  priority: WARNING
R
cat > "$T/s4.yaml" <<'R'
- rule: Bench Connect6
  desc: every connect to the benchmark's IPv6 documentation address
  condition: evt.type = connect and fd.sip = 2001:db8::1
  output: bench connect (connection=%fd.name)
  priority: WARNING
R
ip netns add "$NS"; ip -n "$NS" link set lo up
for a in 198.51.100.2/32 10.77.0.1/32 192.168.77.1/32 2001:db8::2/128; do
  ip -n "$NS" addr add $a dev lo $([[ $a == *:* ]] && echo nodad)
done
ip netns exec "$NS" sysctl -qw net.ipv4.tcp_tw_reuse=1 "net.ipv4.ip_local_port_range=1024 65535"
stat() {
  bpftool -j prog show name "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin); d = d if isinstance(d, list) else [d]
d.sort(key=lambda p: p["id"])
print(" ".join("%d %d" % (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in d))'
}
for order in "1 2 3 4" "2 3 4 1" "3 4 1 2" "4 1 2 3"; do
  PIDS=()
  for s in $order; do
    "$B/egret" run --no-identity --rules "$T/s$s.yaml" > /dev/null 2> "$T/agent$s.log" & PIDS+=($!)
    for _ in $(seq 100); do grep -q "egret ready" "$T/agent$s.log" && break; sleep 0.1; done
  done
  sysctl -qw kernel.bpf_stats_enabled=1
  for _ in 1 2 3 4 5; do
    for dest in 127.0.0.1:0 10.77.0.1:0 192.168.77.1:0 198.51.100.2:0 '[::1]:0' '[2001:db8::2]:0'; do
      prog=egret_connect4; [[ $dest == \[* ]] && prog=egret_connect6
      a=($(stat $prog)); ip netns exec "$NS" "$B/egret-probe" connect-loop "$dest" "$N" > /dev/null; b=($(stat $prog))
      i=0
      for s in $order; do
        echo "$dest s$s $(( (b[2*i] - a[2*i]) / (b[2*i+1] - a[2*i+1]) ))"; i=$((i + 1))
      done
    done
  done >> "$T/runs"
  sysctl -qw kernel.bpf_stats_enabled=0
  kill "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null || true
done
python3 - "$T/runs" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    dest, shape, ns = line.split()
    runs[(dest, shape)].append(int(ns))
names = {"s1": "built-ins only", "s2": "seed rule", "s3": "one address alerted",
         "s4": "one IPv6 address alerted"}
print("| destination | " + " | ".join(names.values()) + " |")
print("|---|" + "---:|" * len(names))
for dest in dict.fromkeys(d for d, _ in runs):
    cells = [f"{statistics.median(runs[(dest, s)]):.0f}" for s in names]
    print(f"| {dest.rsplit(':', 1)[0].strip('[]')} | " + " | ".join(cells) + " |")
PY
