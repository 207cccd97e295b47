#!/usr/bin/env bash
# Instructions per event of the userspace pipeline (BENCHMARKS.md §3, §11),
# counted by callgrind: this VM has no hardware counters and its timings
# move with its neighbours' load, an instruction count does not. Each NAME
# (default: ioc_0 ioc_1000 ioc_1000000) is a pipeline of
# agent/benches/pipeline.rs: mixed, alert_storm, ioc_N (the mixed workload
# with `fd.sip in (ioc_list)` of N entries before the bundled rules) or
# rules_N. The bench builds it, runs its 4096 records once to warm it, once
# more inside `counted_run`, which is all callgrind collects.
# Needs valgrind (Debian: valgrind). No network, no root.
set -euo pipefail
W=$(cd "$(dirname "$0")/.." && pwd)
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(ioc_0 ioc_1000 ioc_1000000)
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
BIN=$(cd "$W" && cargo bench -p egret --bench pipeline --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "pipeline" and m.get("executable"):
        print(m["executable"])')
[ -x "$BIN" ] || { echo "could not build the pipeline bench" >&2; exit 1; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
printf '| pipeline | instructions per event | alerts |\n|---|---:|---:|\n'
for name in "${NAMES[@]}"; do
  EGRET_BENCH_ONCE=$name valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='*counted_run*' --callgrind-out-file="$T/$name.out" \
    "$BIN" > "$T/$name.stdout" 2> "$T/$name.log" ||
    { echo "$name failed:" >&2; tail -20 "$T/$name.log" >&2; exit 1; }
  events=$(awk '/^pipeline\/once/ {for (i = 1; i < NF; i++) if ($i == "events") print $(i + 1)}' "$T/$name.stdout")
  alerts=$(awk '/^pipeline\/once/ {print $NF}' "$T/$name.stdout")
  total=$(awk '/^(totals|summary):/ {print $2; exit}' "$T/$name.out")
  [ -n "$events" ] && [ -n "$total" ] || { echo "$name: no count" >&2; exit 1; }
  printf '| %s | %d | %s |\n' "$name" $((total / events)) "$alerts"
done
