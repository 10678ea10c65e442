"""How far each peer trails the seed during a `damselfly bench swarm` run.

    .venv/bin/python benchmarks/swarm_lag.py RESULT.json [STEP_SECONDS]

Reads the run's progress samples (bytes each host holds, in whole pieces, about
once a second) and prints, every STEP seconds (default 2), the seed's MiB and
each peer's lag behind it in MiB. A steady lag of a few pieces is the root
transfers' share of the receivers' downlinks (BENCHMARKS.md, "why a peer trails
the seed"); a growing one means the peers draw less than the seed fetches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MiB = 1 << 20


def held_at(samples: list[list[float]], t: float) -> float:
    """Bytes held at time ``t``: the last sample at or before it."""
    value = 0.0
    for when, nbytes in samples:
        if when > t:
            break
        value = nbytes
    return value


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    data = json.loads(Path(sys.argv[1]).read_text())
    step = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    progress: dict[str, list[list[float]]] = data["progress"]
    seeds = [h["name"] for h in data["hosts"] if h["role"] == "seed"]
    peers = [h["name"] for h in data["hosts"] if h["role"] == "peer"]
    if not seeds:
        print("swarm_lag: the run has no seed host", file=sys.stderr)
        return 1
    seed = seeds[0]
    print(f"{'t (s)':>6} {seed + ' MiB':>10}  lag MiB: " + " ".join(f"{p:>6}" for p in peers))
    end = (data["completion"]["max_s"] or 0) + step
    t = 0.0
    while t <= end:
        ahead = held_at(progress[seed], t)
        lags = " ".join(f"{(ahead - held_at(progress[p], t)) / MiB:6.0f}" for p in peers)
        print(f"{t:6.1f} {ahead / MiB:10.0f}  lag MiB: {lags}")
        t += step
    return 0


if __name__ == "__main__":
    sys.exit(main())
