"""A daemon restarted on a store of held tasks serves them and re-registers them (real processes).

The store is laid out as a daemon leaves finished tasks (tests/helpers/store.py),
more of them than the daemon re-announces at once. The origin serves the same
files and counts its bytes: a held task served from the store, or a second
peer fed by the restarted daemon (which the scheduler only offers as a parent
once the task was re-registered), costs the origin nothing. The time this takes
with 100 k tasks is measured in benchmarks/daemon_restart.py, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from damselfly.daemon.announcer import RESTORE_STREAMS
from helpers.processes import Procs, run_dfget, sha256_of
from helpers.store import write_held_task

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
HELD = RESTORE_STREAMS + 8  # more than one round of re-announce streams


def test_a_daemon_restarted_with_its_store_serves_and_reregisters_held_tasks(
    procs: Procs, short_tmp: Path
) -> None:
    files = short_tmp / "files"
    files.mkdir()
    sizes = {f"f{i}.bin": 64 * 1024 + i for i in range(HELD)} | {"big.bin": 5 * MiB + 3}
    origin = procs.origin(files)
    data_dir = short_tmp / "a"  # the data dir procs.daemon("a") uses
    for name, size in sizes.items():
        content = os.urandom(size)
        (files / name).write_bytes(content)
        write_held_task(data_dir, origin.url(name), content)

    port = int(procs.scheduler().ready["grpc_port"])
    a = procs.daemon("a", scheduler_port=port)  # starts on the store it finds
    b = procs.daemon("b", scheduler_port=port)  # holds nothing

    # Served by a from its store.
    out = short_tmp / "out-a.bin"
    r = run_dfget(origin.url("f5.bin"), out, a.ready["socket"])
    assert r.returncode == 0, r.stderr + a.log_tail()
    assert sha256_of(out) == sha256_of(files / "f5.bin")
    # b gets tasks a re-registered (the first, the last, the one of two pieces) from a.
    for name in ("f0.bin", f"f{HELD - 1}.bin", "big.bin"):
        out = short_tmp / f"out-b-{name}"
        r = run_dfget(origin.url(name), out, b.ready["socket"])
        assert r.returncode == 0, r.stderr + b.log_tail()
        assert sha256_of(out) == sha256_of(files / name)
    assert sum(origin.bytes_for(f"/{name}") for name in sizes) == 0  # nothing from the origin
    said = (short_tmp / "logs" / "a.log").read_text()
    assert f"registered {HELD + 1} stored task(s) with scheduler" in said
