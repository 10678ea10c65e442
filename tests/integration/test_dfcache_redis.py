"""dfcache with the scheduler's state in a real Redis (``database.redis.url``): real processes.

A redis-server (tests/helpers/redis_server.py), schedulers and daemons on
loopback (tests/helpers/processes.py), ``damselfly cache`` as a user runs it.
A scheduler SIGKILLed and restarted on its port still knows every dfcache
task (and, without Redis, the same restart loses it: the test can fail); two
schedulers sharing one Redis answer ``cache stat`` alike and replicate across
each other's hosts. The password in the URL never reaches a log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from damselfly.runtime.children import ChildProcess, spawn
from damselfly.runtime.cluster import scheduler_command
from helpers.processes import READY_TIMEOUT, Procs, random_file, sha256_of, short_tempdir
from helpers.redis_server import RedisServer, redis_server
from integration.test_dfcache import cache

pytestmark = pytest.mark.integration

SIZE = 5 * 1024 * 1024 + 777  # two pieces of 4 MiB


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs(short_tempdir("dfq-"))
    try:
        yield p
    finally:
        p.cleanup()


def scheduler(procs: Procs, name: str, redis_url: str, *, port: int = 0) -> ChildProcess:
    """A scheduler process with ``database.redis.url`` (empty: in memory), on ``port`` (0: free)."""
    cfg = procs.root / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"redis": {"url": redis_url}}}))
    argv = [*scheduler_command(procs.root, port=port, name=name), "--config", str(cfg)]
    child = spawn(
        name, argv, log_path=procs.root / "logs" / f"{name}.log",
        ready_file=procs.root / "run" / f"{name}.ready.json",
    )  # fmt: skip
    procs.children.append(child)
    child.wait_ready(READY_TIMEOUT)
    return child


def kill(child: ChildProcess) -> None:
    child.popen.kill()  # SIGKILL, by PID
    child.popen.wait(timeout=10)


def stat(daemon: ChildProcess, task_id: str) -> dict[str, Any]:
    r = cache(daemon.ready["socket"], "stat", task_id, "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def logs(procs: Procs) -> str:
    return "\n".join(c.log_path.read_text(errors="replace") for c in procs.children if c.log_path.exists())


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "in-memory"])
def test_a_scheduler_restart_with_redis_loses_no_dfcache_task(
    procs: Procs, redis: RedisServer, with_redis: bool
) -> None:
    url = redis.url if with_redis else ""
    s = scheduler(procs, "scheduler", url)
    port = int(s.ready["grpc_port"])
    a = procs.daemon("a", scheduler_port=port)
    b = procs.daemon("b", scheduler_port=port)
    src = procs.root / "model.bin"
    digest = random_file(src, SIZE)
    r = cache(a.ready["socket"], "import", str(src), "--replicas", "2", "--ttl", "1h", "--json")
    assert r.returncode == 0, r.stderr + "\n" + s.log_tail()
    task_id = json.loads(r.stdout)["id"]
    before = stat(b, task_id)
    assert before["persistent_replicas"] == 2 and before["content_length"] == SIZE

    kill(s)
    s = scheduler(procs, "scheduler", url, port=port)  # the same address: daemons reconnect
    c = procs.daemon("c", scheduler_port=port)  # a host the restarted scheduler sees first

    after = stat(b, task_id)
    if not with_redis:
        # The holders register their copies again as the restarted scheduler answers them, one
        # after the other: wait for both rather than read the first moment.
        deadline = time.monotonic() + 30
        while after["persistent_replicas"] < before["persistent_replicas"] and time.monotonic() < deadline:
            time.sleep(0.2)
            after = stat(b, task_id)
    out = procs.root / "exported.bin"
    r = cache(c.ready["socket"], "export", task_id, "-O", str(out))
    if with_redis:
        assert after == before  # it never forgot: the task's own settings (replicas, TTL) too
    else:
        # In memory the restarted scheduler learns the task again from its holders, who register
        # what they hold as soon as it answers (daemon/announcer.py): the copies, not its settings.
        assert after["persistent_replicas"] >= 1, after  # relearned from a holder at least
        assert after["content_length"] == before["content_length"], after
    assert r.returncode == 0, r.stderr + "\n" + s.log_tail()
    assert sha256_of(out) == digest
    assert stat(a, task_id)["replicas"] == 3  # a, b and now c
    if not with_redis:
        return
    assert redis.password not in logs(procs)
    said = s.log_path.read_text()
    assert "Redis at redis://" in said and "@127.0.0.1" in said, said  # the URL, its secret hidden


def test_two_schedulers_sharing_redis_answer_the_same_stat(procs: Procs, redis: RedisServer) -> None:
    s1 = scheduler(procs, "scheduler-1", redis.unix_url)
    s2 = scheduler(procs, "scheduler-2", redis.unix_url)
    a = procs.daemon("a", scheduler_port=int(s1.ready["grpc_port"]))
    b = procs.daemon("b", scheduler_port=int(s1.ready["grpc_port"]))
    c = procs.daemon("c", scheduler_port=int(s2.ready["grpc_port"]))
    src = procs.root / "data.bin"
    digest = random_file(src, SIZE)
    # Three replicas on three hosts: scheduler 1 must place one on c, which only scheduler 2 knows.
    r = cache(a.ready["socket"], "import", str(src), "--replicas", "3", "--json")
    assert r.returncode == 0, r.stderr + "\n" + logs(procs)[-4000:]
    task_id = json.loads(r.stdout)["id"]
    via_1, via_2 = stat(a, task_id), stat(c, task_id)
    assert via_1 == via_2
    assert via_1["persistent_replicas"] == 3, via_1
    data_dir = Path(c.ready["socket"]).parent
    content = data_dir / "tasks" / task_id[:3] / task_id / "content"
    assert sha256_of(content) == digest  # c's replica, fetched through scheduler 2
    assert stat(b, task_id) == via_1
    assert redis.password not in logs(procs)
