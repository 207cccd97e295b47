#!/usr/bin/env bash
# Per-run cost of the process and cgroup lifecycle programs (BENCHMARKS.md
# section 7), with kernel.bpf_stats_enabled. Run as root after
# `cargo build -p egret`. Nothing leaves the machine: the agent observes,
# the execs are /bin/true copies, the cgroups are throwaway directories.
#   N   execs per phase (default 2000)
#   M   cgroups created and removed (default 500)
# Other work on the node execs too, so each phase reports the delta of
# run_time_ns / run_cnt of this agent's programs over that phase.
set -euo pipefail
W=$(cd "$(dirname "$0")/.." && pwd)
CG=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)/egret-execbench-$$
T=$(mktemp -d)
N=${N:-2000}
M=${M:-500}
PREV=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() { kill $AG 2>/dev/null || true; wait 2>/dev/null || true; for d in $CG/*/; do rmdir $d 2>/dev/null || true; done; rmdir $CG 2>/dev/null || true; rm -rf $T; sysctl -qw kernel.bpf_stats_enabled=$PREV; }
trap cleanup EXIT
mkdir -p $CG
$W/target/debug/egret run --no-identity 2>$T/agent.log >/dev/null & AG=$!
for i in $(seq 100); do grep -q "egret ready" $T/agent.log && break; sleep 0.2; done
IDS=$(sed -n 's/.*program_ids=\[\([0-9, ]*\)\].*/\1/p' $T/agent.log | tr -d ' ')
[ -n "$IDS" ] || { cat $T/agent.log; exit 1; }
snap() {
  bpftool -j prog show | IDS=$IDS python3 -c '
import json, os, sys
ids = {int(i) for i in os.environ["IDS"].split(",")}
for p in json.load(sys.stdin):
    if p["id"] in ids and p.get("name", "").startswith(("egret_exec", "egret_cgroup")):
        print(p["name"], p.get("run_cnt", 0), p.get("run_time_ns", 0))
'
}
report() { # label before after
  python3 - "$1" "$2" "$3" <<'PY'
import sys
label, before, after = sys.argv[1:]
parse = lambda s: {l.split()[0]: tuple(map(int, l.split()[1:])) for l in s.splitlines() if l}
b, a = parse(before), parse(after)
for name in sorted(a):
    runs = a[name][0] - b.get(name, (0, 0))[0]
    ns = a[name][1] - b.get(name, (0, 0))[1]
    if runs:
        print(f"{label:28} {name:22} runs {runs:6} ns/run {ns // runs}")
PY
}
DEEP=$T/a/b/c/d/e/f/g/h/i/j/k/l/m/n
mkdir -p $DEEP; cp /bin/true $DEEP/true
sysctl -qw kernel.bpf_stats_enabled=1
S0=$(snap)
for i in $(seq $N); do /bin/true; done
S1=$(snap)
for i in $(seq $N); do $DEEP/true; done
S2=$(snap)
for i in $(seq $M); do mkdir $CG/c$i; rmdir $CG/c$i; done
S3=$(snap)
report "exec /bin/true" "$S0" "$S1"
report "exec, 16 path components" "$S1" "$S2"
report "cgroup mkdir+rmdir" "$S2" "$S3"
