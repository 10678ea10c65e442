"""The piece port's limits as plain decisions (daemon/transfer/send_guard.py)."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
from pathlib import Path

import pytest

from damselfly.daemon.transfer.send_guard import (
    Connection,
    SendLimits,
    acked_bytes,
    queued_bytes,
    send_at_once,
    to_evict,
    watched,
)

MiB = 1024 * 1024


def test_defaults_let_a_5_mbit_link_shared_by_eight_pieces_finish_a_64_mib_piece() -> None:
    limits = SendLimits()
    share = 5_000_000 / 8 / 8  # bytes/s of one of eight pieces on a 5 mbit link
    assert limits.idle_timeout <= 5
    assert 64 * MiB / share < limits.budget(64 * MiB)
    assert limits.per_address >= 64


def test_budget_is_never_below_the_idle_timeout() -> None:
    limits = SendLimits(idle_timeout=2, min_rate=1 * MiB)
    assert limits.budget(1) == 2
    assert limits.budget(8 * MiB) == 8


@pytest.mark.parametrize("bad", [{"idle_timeout": 0}, {"min_rate": 0}, {"per_address": -1}])
def test_nonsense_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SendLimits(**bad)  # type: ignore[arg-type]


def test_stalled_sends_go_first_then_the_longest_waiting() -> None:
    limits = SendLimits(idle_timeout=4)
    now = 100.0
    moving = Connection("a", 0, progress=99.5, sending=True)
    stalled_long = Connection("a", 0, progress=50, sending=True)
    stalled = Connection("a", 0, progress=90, sending=True)
    waiting_long = Connection("a", 0, progress=10)
    waiting = Connection("a", 0, progress=95)
    everyone = [moving, stalled, waiting, stalled_long, waiting_long]
    assert to_evict(everyone, limits, now) is stalled_long
    assert to_evict([moving, stalled, waiting, waiting_long], limits, now) is stalled
    assert to_evict([moving, waiting, waiting_long], limits, now) is waiting_long
    assert to_evict([moving, waiting], limits, now) is waiting
    assert to_evict([moving], limits, now) is None  # a send making progress is never evicted


class Acks:
    """A peer's acknowledged byte count that moves only when told to."""

    def __init__(self, moving: bool) -> None:
        self.moving = moving
        self.n = 0

    def __call__(self) -> int:
        if self.moving:
            self.n += 1
        return self.n


async def test_a_send_the_peer_stops_acknowledging_times_out() -> None:
    limits = SendLimits(idle_timeout=0.05)
    progress: list[int] = []
    with pytest.raises(TimeoutError, match="no send progress"):
        async with watched(Acks(moving=False), limits, 60, lambda: progress.append(1)):
            await asyncio.sleep(30)  # the send that never ends
    assert progress == []


async def test_a_send_that_moves_is_left_alone_until_its_budget() -> None:
    limits = SendLimits(idle_timeout=0.05)
    progress: list[int] = []
    async with watched(Acks(moving=True), limits, 60, lambda: progress.append(1)):
        await asyncio.sleep(0.3)  # longer than the idle timeout, acknowledged all along
    assert progress  # the eviction clock heard of it
    with pytest.raises(TimeoutError, match="minimum rate"):
        async with watched(Acks(moving=True), limits, 0.2, lambda: None):
            await asyncio.sleep(30)


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def send() -> None:
        async with watched(Acks(moving=True), SendLimits(idle_timeout=10), 60, lambda: None):
            await asyncio.sleep(30)

    task = asyncio.ensure_future(send())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_acked_bytes_of_a_real_connection() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as c,
        srv.accept()[0] as s,
    ):
        before = acked_bytes(c)
        assert before is not None
        c.sendall(b"x" * 100_000)
        got = 0
        while got < 100_000:
            got += len(s.recv(65536))
        deadline = time.monotonic() + 10  # a bound on a hang: the last ACK may trail the bytes
        while acked_bytes(c) != before + 100_000 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert acked_bytes(c) == before + 100_000
    assert acked_bytes(object()) is None


def test_queued_bytes_are_what_the_peer_has_not_acknowledged() -> None:
    # A send's budget counts what waits ahead of it: bytes the peer's full window holds back.
    with (
        socket.create_server(("127.0.0.1", 0)) as srv,
        socket.create_connection(srv.getsockname()) as c,
        srv.accept()[0] as s,
    ):
        assert queued_bytes(c) == 0  # (a tiny SO_RCVBUF here made the drain below take 100 s)
        c.setblocking(False)
        written = 0
        try:
            while True:
                written += c.send(b"x" * 65536)
        except BlockingIOError:
            pass
        queued = queued_bytes(c)
        assert 0 < queued <= written
        got = 0
        while got < written:
            got += len(s.recv(1 << 20))
        deadline = time.monotonic() + 10  # a bound on a hang: the last ACK may trail the bytes
        while queued_bytes(c) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert queued_bytes(c) == 0
    assert queued_bytes(object()) == 0


def _content(path: Path, size: int) -> tuple[bytes, io.FileIO]:
    content = os.urandom(size)
    path.write_bytes(content)
    return content, io.FileIO(path, "r")


async def test_send_at_once_sends_what_the_socket_takes_in_order_and_never_past_queued_bytes(
    tmp_path: Path,
) -> None:
    content, f = _content(tmp_path / "c", 8 * MiB)
    received = bytearray()
    srv = socket.create_server(("127.0.0.1", 0))
    _, writer = await asyncio.open_connection(*srv.getsockname())
    child, _ = srv.accept()
    try:
        with f:
            writer.write(b"head")
            assert send_at_once(writer, f, 0, 64 * 1024) == 64 * 1024  # room: all of it, after the head
            took = send_at_once(writer, f, 64 * 1024, 8 * MiB - 64 * 1024)
            assert 0 < took < 8 * MiB - 64 * 1024  # the socket filled: a part, the caller waits for the rest
            assert send_at_once(writer, f, 64 * 1024 + took, 1024) == 0  # full: nothing, no error
            writer.write(b"tail")  # the transport holds it now ...
            assert writer.transport.get_write_buffer_size() > 0
            assert send_at_once(writer, f, 0, 1024) == 0  # ... so nothing may overtake it
            child.setblocking(False)
            want = 4 + 64 * 1024 + took + 4
            deadline = time.monotonic() + 10
            while len(received) < want and time.monotonic() < deadline:
                try:
                    received += child.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.001)  # the loop flushes the transport's "tail"
        assert bytes(received) == b"head" + content[: 64 * 1024 + took] + b"tail"
    finally:
        writer.close()
        child.close()
        srv.close()
