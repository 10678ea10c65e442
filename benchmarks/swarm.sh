#!/usr/bin/env bash
# The swarm-efficiency benchmarks of BENCHMARKS.md on the namespace testbed (root; about 2-6 min per run).
#   sudo benchmarks/swarm.sh [RUNS] [OUTDIR]         RUNS per scenario (default 3), results in OUTDIR
# Each run writes OUTDIR/<scenario>-<i>.json and .png; the summary prints the median of each ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=${2:-bench-results/swarm}
mkdir -p "$OUT"
DF=.venv/bin/damselfly

declare -A SCENARIOS=(
  [flash-8x100]="--scenario flash-crowd --peers 8 --size 256MiB --rate 100mbit --origin-rate 100mbit"
  [flash-16x25]="--scenario flash-crowd --peers 16 --size 256MiB --rate 25mbit --origin-rate 25mbit"
  [mixed-8x100]="--scenario mixed-rates --peers 8 --size 256MiB --rate 100mbit --origin-rate 100mbit"
)
for name in flash-8x100 flash-16x25 mixed-8x100; do
  for i in $(seq 1 "$RUNS"); do
    echo "== $name run $i" >&2
    # The same memory state for every run: this VM's page-cache writes cost several times more
    # with many GiB already cached (seen: 1.60 vs 1.35 T_min with 9 GiB of kept runs in the cache).
    sync; echo 1 > /proc/sys/vm/drop_caches
    # shellcheck disable=SC2086
    $DF bench swarm ${SCENARIOS[$name]} --out "$OUT/$name-$i.json" || true
  done
done

.venv/bin/python - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
runs = {}
for p in sorted(Path(sys.argv[1]).glob("*.json")):
    runs.setdefault(p.stem.rsplit("-", 1)[0], []).append(json.loads(p.read_text()))
def med(xs):
    xs = [x for x in xs if x is not None]
    return f"{statistics.median(xs):.3f}" if xs else "-"
print("scenario       runs  ok  max/T_min  p50/T_min  origin/F  cpu_busy  testbed_cpu")
for name, rs in runs.items():
    c = [r["completion"] for r in rs]
    print(f"{name:14} {len(rs):4} {sum(r['ok'] for r in rs):3}  {med([x['max_over_t_min'] for x in c]):>9}"
          f"  {med([x['p50_over_t_min'] for x in c]):>9}  {med([r['origin']['bytes_over_f'] for r in rs]):>8}"
          f"  {med([r['cpu_busy_fraction'] for r in rs]):>8}  {med([r['testbed_cpu_fraction'] for r in rs]):>11}")
PY
