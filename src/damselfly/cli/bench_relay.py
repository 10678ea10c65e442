"""``damselfly bench relay``: a relaying daemon's CPU per byte beside the kernel's (loopback).

Imports the testbed lazily, so ``damselfly --help`` stays fast (all but :mod:`..testbed.machine`,
which imports only the standard library and ``damselfly.units``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..testbed.machine import MEMORY_HELP, memory_mode, resident_memory


def relay(
    size: Annotated[str, typer.Option(help="bytes relayed per round, e.g. 256MiB")] = "256MiB",
    children: Annotated[str, typer.Option(help="comma-separated child counts k")] = "1,2,4",
    runs: Annotated[int, typer.Option(min=1, max=20, help="rounds of each kind per k (alternating)")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="print the JSON result on stdout")] = False,
    out: Annotated[Path | None, typer.Option(help="write the JSON result here")] = None,
    memory: Annotated[str, typer.Option(help=MEMORY_HELP)] = "resident",
) -> None:
    """One parent daemon, one relaying daemon and k children on 127.0.0.1, no shaping: GB sent on per
    CPU-second of the relaying daemon, against the kernel's splice/sendfile relay of the same bytes
    measured in the same run."""
    from ..runtime.supervisor import Interrupted
    from ..testbed.relay import human_summary, run_relay
    from ..units import parse_size

    try:
        size_bytes = parse_size(size)
        ks = [int(k) for k in children.split(",") if k.strip()]
        if not ks or any(k < 1 or k > 64 for k in ks):
            raise ValueError(f"--children {children!r}: give counts between 1 and 64, e.g. 1,2,4")
        as_is = memory_mode(memory)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    try:
        with resident_memory(as_is=as_is) as prep:
            result = run_relay(size_bytes, ks, runs)
    except Interrupted:  # stopped while the memory was prepared or put back
        typer.echo("damselfly bench relay: interrupted", err=True)
        raise typer.Exit(1) from None
    data = result.to_json()
    data["memory"] = prep.to_json()
    if out is not None:
        out.write_text(json.dumps(data, indent=2) + "\n")
    typer.echo(human_summary(data), err=json_out)
    if json_out:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    raise typer.Exit(0 if result.ok else 1)
