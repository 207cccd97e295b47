#!/usr/bin/env bash
# Per-run cost of the quarantine programs (BENCHMARKS.md section 6), with
# kernel.bpf_stats_enabled. Run as root after
# `cargo build -p egret --example egret-probe`. Everything stays on this
# machine: a throwaway cgroup below the cgroup2 mount, a network namespace
# with TEST-NET addresses, the control API on loopback.
#   N   connects to the allow-listed 198.51.100.1 (one process; default 20000)
#   M   blocked connects to 203.0.113.1 (one process each; default 300)
set -euo pipefail
W=$(cd "$(dirname "$0")/.." && pwd)
CG=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)/egret-qbench-$$
UID_A=3f1c2b4a-0d9e-4c7b-8a6f-5e4d3c2b1a09
CTR=c1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90
POD=$CG/kubepods/pod$UID_A/$CTR
NS=egret-qbench-$$
T=$(mktemp -d)
cleanup() { kill $AG $LS 2>/dev/null || true; wait 2>/dev/null || true; ip netns del $NS 2>/dev/null; rmdir $POD $CG/kubepods/pod$UID_A $CG/kubepods $CG 2>/dev/null; rm -rf $T; sysctl -qw kernel.bpf_stats_enabled=0; }
trap cleanup EXIT
mkdir -p $POD
ip netns add $NS; ip -n $NS link set lo up; ip -n $NS link add v0 type veth peer name v1; ip -n $NS link set v0 up; ip -n $NS link set v1 up
ip -n $NS addr add 198.51.100.1/24 dev v0; ip -n $NS addr add 203.0.113.1/24 dev v0
ip netns exec $NS $W/target/debug/examples/egret-probe listen 0.0.0.0:7000 > /dev/null & LS=$!
echo "test-token-0123456789abcdef" > $T/token
$W/target/debug/egret run --cgroup $CG --no-identity --control-listen 127.0.0.1:19777 --control-token-file $T/token --quarantine-state $T/state.json 2>$T/agent.log >/dev/null & AG=$!
for i in $(seq 50); do grep -q "egret ready" $T/agent.log && break; sleep 0.2; done
curl -s -H "Authorization: Bearer test-token-0123456789abcdef" -d "{\"target\":{\"pod_uid\":\"$UID_A\"},\"allow\":[\"198.51.100.0/24\"]}" http://127.0.0.1:19777/v1/quarantines; echo
sysctl -qw kernel.bpf_stats_enabled=1
sh -c "echo \$\$ > $POD/cgroup.procs && exec ip netns exec $NS $W/target/debug/examples/egret-probe connect-loop 198.51.100.1:7000 ${N:-20000}"
for i in $(seq ${M:-300}); do sh -c "echo \$\$ > $POD/cgroup.procs && exec ip netns exec $NS $W/target/debug/examples/egret-probe report-tcp 203.0.113.1:7000" >/dev/null; done
bpftool -j prog show | python3 -c '
import json,sys
for p in json.load(sys.stdin):
    n=p.get("name","")
    if n.startswith("egret_q_") or n in ("egret_connect4",):
        c=p.get("run_cnt",0); t=p.get("run_time_ns",0)
        print(n, "runs", c, "ns/run", round(t/c) if c else None)
'
