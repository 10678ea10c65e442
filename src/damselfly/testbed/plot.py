"""A PNG of each peer's progress over time, with ``T_min`` marked.

Why a picture: percentiles hide the shape. A flat start says start-up costs,
a few late stragglers say piece picking or parent choice, lines that all bend
together say a shared bottleneck (the origin, or the CPU: its busy fraction is
drawn on a second axis). matplotlib is an optional extra (``damselfly[bench]``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .netns import TestbedError


def plot_progress(data: dict[str, Any], path: Path) -> Path:
    """Draw :meth:`~damselfly.testbed.report.SwarmResult.to_json` output to ``path`` (PNG)."""
    try:
        # Imported by name: matplotlib is optional, so type checking must not need it.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError as e:
        raise TestbedError("plotting needs matplotlib: pip install 'damselfly[bench]'") from e

    f = float(data["file_size"]) or 1.0
    t_min = float(data["t_min_s"])
    roles = {h["name"]: h for h in data["hosts"]}
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    order = [h["name"] for h in data["hosts"] if h["name"] in data["progress"]]  # peer2 before peer10
    for name in order:
        samples = data["progress"][name]
        host = roles[name]
        if not samples:
            continue
        ts = [s[0] for s in samples]
        fs = [100.0 * s[1] / f for s in samples]
        done = host.get("completion_s")
        if done is not None and host.get("exit_code") == 0:
            ts.append(done)
            fs.append(100.0)
        style = "--" if host.get("role") == "seed" else "-"
        wire = ", Dragonfly's wire" if host.get("wire", "damselfly") != "damselfly" else ""
        label = f"{name} ({host.get('down_bits', 0) / 1e6:g} mbit{wire})"
        ax.plot(ts, fs, style, linewidth=1.2, label=label)
    ax.axvline(t_min, color="black", linewidth=1.5, linestyle=":", label=f"T_min = {t_min:.1f} s")
    ax.set_xlabel("seconds since the scenario start")
    ax.set_ylabel("% of the file downloaded")
    ax.set_ylim(0, 105)
    c = data["completion"]
    ratio = c.get("max_over_t_min")
    ax.set_title(
        f"{data['scenario']['name']}: {len(data['scenario']['peers'])} peers, "
        f"{f / 2**20:.0f} MiB; max/T_min = {ratio if ratio is not None else '-'}, "
        f"origin {data['origin']['bytes_over_f']} F"
    )
    cpu = data.get("cpu_samples") or []
    if cpu:
        ax2 = ax.twinx()
        ax2.plot([s[0] for s in cpu], [100 * s[1] for s in cpu], color="grey", alpha=0.5, linewidth=1)
        ax2.set_ylabel("CPU busy % (grey)")
        ax2.set_ylim(0, 105)
    ax.legend(loc="lower right", fontsize="small", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
