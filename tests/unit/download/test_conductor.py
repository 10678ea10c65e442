"""The conductor driven end to end against in-memory fakes: a scheduler stream, parents' piece
syncs, a piece pool and an origin; a real PieceStore underneath. No sockets, no sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import random
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from damselfly.daemon.download.conductor import Conductor, ConductorDeps
from damselfly.daemon.download.parents import PARENT_FAILURE_LIMIT
from damselfly.daemon.origin.source import OriginSize
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.peer_rpc import ParentPiece
from damselfly.domain import (
    CandidateParent,
    DownloadSpec,
    EmptyTask,
    HostInfo,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    PieceInfo,
    ScheduleAnswer,
    TrafficType,
)
from damselfly.errors import PeerError, ProtocolError, SchedulerError, SourceStatusError
from damselfly.pieces import piece_count

PL = 4096
DATA = random.Random(3).randbytes(12 * PL - 1000)
PIECES = piece_count(len(DATA), PL)
SPEC = DownloadSpec(
    url="http://origin.test/blob", piece_length=PL, digest=f"sha256:{hashlib.sha256(DATA).hexdigest()}"
)
TASK = "ab" * 32


def parent(name: str, port: int) -> CandidateParent:
    host = HostInfo(id=f"10.0.0.9-{name}", hostname=name, ip="10.0.0.9", port=port, download_port=port)
    return CandidateParent(peer_id=f"10.0.0.9-{name}-1", host=host)


GOOD, BAD, EMPTY = parent("good", 7001), parent("bad", 7002), parent("empty", 7003)
MUTE = parent("mute", 7004)  # a Rust parent whose StatTask (its scheduler's view) cannot say the length


def with_length(p: CandidateParent) -> CandidateParent:
    """``p`` as a scheduler that knows the task's length offers it."""
    return dataclasses.replace(p, content_length=len(DATA), piece_count=PIECES)


@dataclass
class FakeStream:
    """A PeerStream that records what the conductor says and answers from a script: the
    next scripted answer for each register or reschedule, as a scheduler does; :meth:`push`
    sends one nobody asked for."""

    answers: list[ScheduleAnswer]
    said: list[tuple[Any, ...]] = field(default_factory=list)
    closed: bool = False
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    addr: str = "scheduler"
    # Answers sent and not yet read (None: the script had none left for a request).
    sent: list[ScheduleAnswer | None] = field(default_factory=list)
    news: asyncio.Event = field(default_factory=asyncio.Event)

    def _answer(self) -> None:
        self.sent.append(self.answers.pop(0) if self.answers else None)
        self.news.set()

    def push(self, answer: ScheduleAnswer) -> None:
        self.sent.append(answer)
        self.news.set()

    def register(
        self, spec: DownloadSpec, *, content_length: int | None = None, piece_length: int = 0
    ) -> None:
        sizes = () if content_length is None else (content_length, piece_length)
        self.said.append(("register", spec.url, *sizes))
        self._answer()

    def started(self) -> None:
        self.said.append(("started",))

    def piece_finished(self, piece: PieceInfo) -> None:
        self.said.append(("piece_finished", piece.number, piece.parent_id))

    def piece_back_to_source_finished(self, piece: PieceInfo) -> None:
        self.said.append(("piece_back_to_source_finished", piece.number))

    def piece_failed(self, number: int, parent_id: str, *, temporary: bool) -> None:
        self.said.append(("piece_failed", number, parent_id, temporary))

    def reschedule(self, failed_parents: list[CandidateParent], description: str) -> None:
        self.said.append(("reschedule", [p.peer_id for p in failed_parents]))
        self._answer()

    def back_to_source_started(self, description: str = "") -> None:
        self.said.append(("back_to_source_started",))

    def back_to_source_finished(self) -> None:
        self.said.append(("back_to_source_finished",))

    def finished(self) -> None:
        self.said.append(("finished",))

    def failed(self, description: str) -> None:
        self.said.append(("failed", description))

    async def next_answer(self, timeout: float | None) -> ScheduleAnswer:
        while not self.sent:
            self.news.clear()
            try:
                await asyncio.wait_for(self.news.wait(), timeout)
            except TimeoutError:
                raise SchedulerError("no answer in time") from None
        answer = self.sent.pop(0)
        if answer is None:
            raise SchedulerError("the script has no more answers")
        return answer

    async def flush(self, timeout: float = 10) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    def kinds(self) -> list[str]:
        return [s[0] for s in self.said]

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [s for s in self.said if s[0] == kind]


@dataclass
class FakeScheduler:
    stream: FakeStream
    extensions: bool = True  # a Damselfly scheduler

    async def speaks_extensions(self) -> bool:
        return self.extensions

    async def link_for(self, task_id: str, wait: float | None) -> FakeScheduler:
        return self

    def peer_stream(self, host_id: str, task_id: str, peer_id: str) -> FakeStream:
        return self.stream


class FakePeerRPC:
    """Parents hold every piece (those in ``empty`` none) and keep SyncPieces open, as real ones do."""

    def __init__(
        self,
        empty: tuple[CandidateParent, ...] = (),
        broken: tuple[CandidateParent, ...] = (),
        mute: tuple[CandidateParent, ...] = (),
        partial: dict[str, int] | None = None,
    ) -> None:
        self.empty = {p.host.id for p in empty}
        self.partial = partial or {}  # host ID -> how many pieces (the first ones) it holds
        self.broken = {p.host.id for p in broken}  # their SyncPieces fails at once
        self.mute = {p.host.id for p in mute}  # they cannot say the content length
        self.open_syncs = 0
        self.stats: list[str] = []  # the hosts asked for the content length
        self.syncs: list[str] = []  # the hosts whose SyncPieces was called

    async def stat_task_length(self, host: HostInfo, task_id: str) -> int | None:
        self.stats.append(host.id)
        return None if host.id in self.mute else len(DATA)

    async def sync_pieces(
        self, host: HostInfo, host_id: str, task_id: str, wanted: Iterable[int], *, extensions: bool
    ) -> AsyncIterator[ParentPiece]:
        self.syncs.append(host.id)
        if host.id in self.broken:
            raise PeerError(f"SyncPieces with parent {host.id} failed: UNAVAILABLE")
        self.open_syncs += 1
        try:
            for n in range(0 if host.id in self.empty else self.partial.get(host.id, PIECES)):
                yield ParentPiece(n, n * PL, min(PL, len(DATA) - n * PL), host.ip, host.download_port, True)
            await asyncio.Event().wait()  # until the download is over
        finally:
            self.open_syncs -= 1


def crc(chunk: bytes) -> str:
    return f"crc32:{zlib.crc32(chunk)}"


class FakePool:
    """Writes the piece's bytes into the fd as the piece client does; ``failing`` ports raise instead."""

    extensions = True

    def __init__(self, failing: dict[int, Callable[[], Exception]]) -> None:
        self.failing = failing
        self.asked: list[tuple[int, int]] = []  # (port, piece)

    async def download_piece(
        self, ip: str, port: int, task_id: str, number: int, fd: int, offset: int, length: int, *,
        timeout: float, on_header: Any = None, digest: Any = None, damselfly: bool = True,
    ) -> PieceInfo:  # fmt: skip
        self.asked.append((port, number))
        chunk = DATA[offset : offset + length]
        if on_header is not None:
            on_header(crc(chunk))
        if port in self.failing:
            raise self.failing[port]()
        os.pwrite(fd, chunk, offset)
        return PieceInfo(number, offset, length, crc(chunk), cost_s=0.001)


class FakeSource:
    """An origin that sends the whole content in pieces, the way HTTPSource.fetch_into calls back."""

    def __init__(self, stat_error: Exception | None = None) -> None:
        self.fetched = 0
        self.stats = 0
        self.stat_error = stat_error

    async def stat(self, url: str, headers: dict[str, str]) -> OriginSize:
        self.stats += 1
        if self.stat_error is not None:
            raise self.stat_error
        return OriginSize(len(DATA), {"Content-Length": str(len(DATA))})

    async def fetch_into(
        self, url: str, headers: dict[str, str], *, fd_factory: Any, on_start: Any, on_piece: Any,
        have: Any = frozenset(), piece_length: int | None = None, on_piece_start: Any = None,
        digest: Any = None,
    ) -> int:  # fmt: skip
        self.fetched += 1
        length = await on_start(len(DATA), {})
        fd = fd_factory()
        try:
            for n in range(piece_count(len(DATA), length)):
                if n in have:
                    continue
                chunk = DATA[n * length : (n + 1) * length]
                if on_piece_start is not None:
                    on_piece_start(n, n * length, len(chunk))
                os.pwrite(fd, chunk, n * length)
                on_piece(PieceInfo(n, n * length, len(chunk), crc(chunk), TrafficType.BACK_TO_SOURCE))
        finally:
            os.close(fd)
        return len(DATA)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PieceStore]:
    s = PieceStore(tmp_path / "data")
    yield s
    s.close()


def deps(
    store: PieceStore,
    stream: FakeStream,
    pool: FakePool,
    rpc: FakePeerRPC,
    source: Any = None,
    *,
    extensions: bool = True,
    **settings: Any,
) -> ConductorDeps:
    settings = {"refresh_interval": 3600.0, **settings}  # no request for more parents unless asked
    return ConductorDeps(
        store=store, pool=pool, source=source, peer_rpc=rpc,
        scheduler=FakeScheduler(stream, extensions),  # type: ignore[arg-type]
        host_id="10.0.0.1-me", host_ip="10.0.0.1", hostname="me", is_seed=False, **settings,
    )  # fmt: skip


def content(store: PieceStore) -> bytes:
    return store.content_path(TASK).read_bytes()


async def test_downloads_from_two_parents_and_drops_the_failing_one(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([GOOD, BAD])])
    rpc = FakePeerRPC()
    pool = FakePool({BAD.host.download_port: lambda: PeerError("the parent hung up")})
    conductor = Conductor(deps(store, stream, pool, rpc), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA
    meta = store.get(TASK)
    assert meta is not None and meta.state == "succeeded" and meta.is_complete
    assert conductor.verified_digest == SPEC.digest and not conductor.back_to_source
    # Every piece came from the good parent, reported once each.
    finished = stream.of("piece_finished")
    assert sorted(n for _, n, _ in finished) == list(range(PIECES))
    assert {pid for _, _, pid in finished} == {GOOD.peer_id}
    # The bad parent fails up to the limit, is dropped and asked no more; the scheduler hears of
    # it once, when it is dropped, with temporary=true (Dragonfly's "avoid this parent").
    failed = stream.of("piece_failed")
    assert [(pid, temporary) for _, _, pid, temporary in failed] == [(BAD.peer_id, True)]
    assert len([1 for port, _ in pool.asked if port == BAD.host.download_port]) >= PARENT_FAILURE_LIMIT
    # The dialogue: register, start, pieces, finish; nothing after "finished"; the stream closed.
    assert stream.kinds()[:2] == ["register", "started"]
    assert stream.kinds()[-1] == "finished"
    assert "reschedule" not in stream.kinds()
    assert stream.closed
    await asyncio.sleep(0)  # let the cancelled syncs unwind
    assert rpc.open_syncs == 0
    assert store.receiving.of(TASK) == {}  # no piece left half-served to children


async def test_parents_that_cannot_finish_are_reported_then_the_origin_fills_the_task(
    store: PieceStore,
) -> None:
    stream = FakeStream([NormalTask([BAD]), NeedBackToSource("no parent can finish")])
    rpc = FakePeerRPC()
    pool = FakePool({BAD.host.download_port: lambda: ProtocolError("garbage frame")})
    source = FakeSource()
    conductor = Conductor(deps(store, stream, pool, rpc, source), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA
    assert conductor.back_to_source and source.fetched == 1
    assert source.stats == 0  # a Damselfly scheduler learns the size from its seed: no probe
    # A protocol error drops the parent at once; the round is then stuck and the dead parent named.
    failed = stream.of("piece_failed")
    assert failed and all(pid == BAD.peer_id and temporary for _, _, pid, temporary in failed)
    assert stream.of("reschedule") == [("reschedule", [BAD.peer_id])]
    kinds = stream.kinds()
    assert kinds.index("reschedule") < kinds.index("back_to_source_started")
    assert sorted(n for _, n in stream.of("piece_back_to_source_finished")) == list(range(PIECES))
    assert kinds[-1] == "back_to_source_finished"
    meta = store.get(TASK)
    assert meta is not None and meta.state == "succeeded"
    assert {p.traffic_type for p in meta.pieces.values()} == {TrafficType.BACK_TO_SOURCE}


async def test_a_scheduler_that_keeps_offering_parents_that_cannot_finish_is_left_for_the_origin(
    store: PieceStore,
) -> None:
    # Each answer offers a new parent that fails at once; the scheduler never says "origin".
    offers = [parent(f"bad{i}", 7100 + i) for i in range(10)]
    stream = FakeStream([NormalTask([p]) for p in offers])
    pool = FakePool({p.host.download_port: lambda: ProtocolError("garbage frame") for p in offers})
    source = FakeSource()
    conductor = Conductor(deps(store, stream, pool, FakePeerRPC(), source, max_schedule_count=3), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA and conductor.back_to_source and source.fetched == 1
    # Three answers taken (the first and two reschedules'), then "failed" and the origin.
    assert len(stream.of("reschedule")) == 2
    assert stream.of("failed") == [("failed", "max schedule count exceeded")]
    assert len(stream.answers) == len(offers) - 3


async def test_a_parent_whose_piece_sync_fails_is_dropped_and_named_at_the_reschedule(
    store: PieceStore,
) -> None:
    stream = FakeStream([NormalTask([BAD]), NeedBackToSource("no parent")])
    rpc = FakePeerRPC(broken=(BAD,))
    pool = FakePool({})
    conductor = Conductor(deps(store, stream, pool, rpc, FakeSource()), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA and pool.asked == []
    assert stream.of("reschedule") == [("reschedule", [BAD.peer_id])]


# A parent that holds nothing keeps the round waiting (the piece timeout is an hour): only the
# conductor's request for more parents, after a refresh interval of a millisecond, moves it on.
NEVER = {"piece_timeout": 3600.0, "refresh_interval": 0.001}


async def test_a_request_for_more_parents_brings_one_that_finishes_the_task(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([EMPTY]), NormalTask([EMPTY, GOOD])])
    rpc = FakePeerRPC(empty=(EMPTY,))
    conductor = Conductor(deps(store, stream, FakePool({}), rpc, **NEVER), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA
    assert stream.of("reschedule")[0] == ("reschedule", [])  # "more parents": nobody failed
    assert {pid for *_, pid in stream.of("piece_finished")} == {GOOD.peer_id}
    assert stream.kinds()[-1] == "finished"


async def test_a_scheduler_that_changes_its_mind_during_a_request_for_more_parents(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([EMPTY]), NeedBackToSource("a seed peer is gone")])
    rpc = FakePeerRPC(empty=(EMPTY,))
    source = FakeSource()
    conductor = Conductor(deps(store, stream, FakePool({}), rpc, source, **NEVER), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA and source.fetched == 1
    assert stream.of("reschedule") == [("reschedule", [])]  # the round ended without a reschedule of its own
    assert stream.kinds()[-2:] == ["piece_back_to_source_finished", "back_to_source_finished"]


# ---------------------------------------------------------------- the content length from parents
# (docs/INTEROP.md 6.3 P3: a Rust parent's StatTask is its scheduler's view, INTERNAL on errors)


async def test_the_length_the_scheduler_gives_with_a_parent_is_used_without_asking(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([GOOD, with_length(EMPTY)])])
    rpc = FakePeerRPC(empty=(EMPTY,))
    conductor = Conductor(deps(store, stream, FakePool({}), rpc), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA
    assert rpc.stats == []  # EMPTY's candidate said it, though GOOD comes first


async def test_a_parent_that_cannot_say_the_length_is_kept_and_another_is_asked(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([MUTE, EMPTY])])
    rpc = FakePeerRPC(empty=(EMPTY,), mute=(MUTE,))
    pool = FakePool({})
    conductor = Conductor(deps(store, stream, pool, rpc), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA
    assert rpc.stats == [MUTE.host.id, EMPTY.host.id]
    # The parent that could not say serves every piece: not dropped for it.
    assert {pid for *_, pid in stream.of("piece_finished")} == {MUTE.peer_id}
    assert "reschedule" not in stream.kinds() and stream.of("piece_failed") == []


async def test_when_no_parent_can_say_the_length_the_schedulers_next_answer_does(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([MUTE]), NormalTask([with_length(MUTE)])])
    rpc = FakePeerRPC(mute=(MUTE,))
    conductor = Conductor(deps(store, stream, FakePool({}), rpc), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA
    # The round ends at once with nobody failed; the answer names the same parent, with the length.
    assert stream.of("reschedule") == [("reschedule", [])]
    assert rpc.stats == [MUTE.host.id]
    # Its piece sync, waiting for the length since the first answer, is the one that served.
    assert rpc.syncs == [MUTE.host.id]
    assert {pid for *_, pid in stream.of("piece_finished")} == {MUTE.peer_id}
    assert stream.kinds()[-1] == "finished"


# ---------------------------------------------------------------- toward Dragonfly's scheduler
# (a scheduler that does not speak Damselfly's extensions: docs/INTEROP.md §3.4-3.5)


def plain_deps(store: PieceStore, stream: FakeStream, source: FakeSource, **settings: Any) -> ConductorDeps:
    # DATA is far below Dragonfly's one-piece rule (tested on its own below): these go P2P.
    settings = {"direct_max": 0, **settings}
    return deps(store, stream, FakePool({}), FakePeerRPC(), source, extensions=False, **settings)


async def test_toward_dragonfly_content_of_at_most_one_small_piece_skips_the_scheduler(
    store: PieceStore,
) -> None:
    # Dragonfly's client fetches content of <= 4 MiB from the origin without registering.
    stream = FakeStream([NormalTask([GOOD])])
    source = FakeSource()
    conductor = Conductor(plain_deps(store, stream, source, direct_max=len(DATA)), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA and conductor.back_to_source
    assert source.stats == 1 and source.fetched == 1
    assert stream.said == []  # not even a register


async def test_a_small_content_with_back_to_source_disabled_still_asks_the_scheduler(
    store: PieceStore,
) -> None:
    stream = FakeStream([NormalTask([GOOD])])
    source = FakeSource()
    spec = dataclasses.replace(SPEC, disable_back_to_source=True)
    conductor = Conductor(plain_deps(store, stream, source, direct_max=len(DATA)), TASK, spec)

    await conductor.run()

    assert content(store) == DATA and not conductor.back_to_source and source.fetched == 0
    assert stream.said[0] == ("register", SPEC.url, len(DATA), PL)


async def test_with_damselflys_scheduler_small_content_goes_through_it(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([GOOD])])
    source = FakeSource()
    conductor = Conductor(
        deps(store, stream, FakePool({}), FakePeerRPC(), source, direct_max=len(DATA)), TASK, SPEC
    )

    await conductor.run()

    assert content(store) == DATA and source.fetched == 0 and stream.kinds()[0] == "register"


async def test_toward_dragonfly_the_size_is_learned_first_and_registered(store: PieceStore) -> None:
    stream = FakeStream([NormalTask([GOOD])])
    source = FakeSource()
    conductor = Conductor(plain_deps(store, stream, source), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA
    assert source.stats == 1 and source.fetched == 0
    assert conductor.deps.peer_rpc.stats == []  # type: ignore[attr-defined]  # the probe's length: no parent asked
    assert stream.said[0] == ("register", SPEC.url, len(DATA), PL)
    meta = store.get(TASK)
    assert meta is not None and meta.content_length == len(DATA) and meta.piece_length == PL
    assert stream.kinds() == ["register", "started", *["piece_finished"] * PIECES, "finished"]


async def test_toward_dragonfly_no_more_parents_are_asked_for(store: PieceStore) -> None:
    stream = FakeStream([])
    conductor = Conductor(plain_deps(store, stream, FakeSource(), refresh_interval=0.0), TASK, SPEC)
    conductor._extensions = False
    conductor._stream = stream  # type: ignore[assignment]
    loop = asyncio.create_task(conductor._refresh_parents())
    for _ in range(20):
        await asyncio.sleep(0)
    assert stream.said == [] and not loop.done()  # it asks nothing...
    stream.push(NeedBackToSource("the fetcher is gone"))  # ...but takes what it is told
    await asyncio.wait_for(loop, 5)
    assert isinstance(conductor._pending_answer, NeedBackToSource) and stream.said == []


async def test_sent_back_to_source_unasked_mid_download_fetches_only_what_it_lacks(
    store: PieceStore,
) -> None:
    # The scheduler lost the task's seed; this peer holds most and is told to fetch the rest.
    held = 5
    stream = FakeStream([NormalTask([with_length(GOOD)])])
    rpc = FakePeerRPC(partial={GOOD.host.id: held})
    source = FakeSource()
    conductor = Conductor(deps(store, stream, FakePool({}), rpc, source), TASK, SPEC)
    run = asyncio.create_task(conductor.run())
    for _ in range(2000):
        meta = store.get(TASK)
        if meta is not None and len(meta.pieces) == held:
            break
        await asyncio.sleep(0.001)
    else:
        raise AssertionError("the parent's pieces never landed")
    assert not run.done()  # nobody holds the rest: it waits
    stream.push(NeedBackToSource("the fetcher is gone"))
    await asyncio.wait_for(run, 10)

    assert content(store) == DATA and conductor.back_to_source and source.fetched == 1
    assert sorted(n for _, n in stream.of("piece_back_to_source_finished")) == list(range(held, PIECES))
    assert sorted(n for _, n, _ in stream.of("piece_finished")) == list(range(held))
    kinds = stream.kinds()
    assert "reschedule" not in kinds  # told at once, not after the round stalled
    assert kinds.index("back_to_source_started") > kinds.index("started")
    assert kinds[-1] == "back_to_source_finished"


async def test_an_origin_that_cannot_say_the_size_fails_the_download_before_the_register(
    store: PieceStore,
) -> None:
    stream = FakeStream([NormalTask([GOOD])])
    source = FakeSource(stat_error=SourceStatusError(SPEC.url, 403, "Forbidden"))
    conductor = Conductor(plain_deps(store, stream, source), TASK, SPEC)

    with pytest.raises(SourceStatusError):
        await conductor.run()
    assert stream.said == []


async def test_an_empty_task_the_origin_says_is_not_empty_comes_from_the_origin(store: PieceStore) -> None:
    # Dragonfly's scheduler keeps the size a task was first registered with (0 from an old peer).
    stream = FakeStream([EmptyTask()])
    source = FakeSource()
    conductor = Conductor(plain_deps(store, stream, source), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA and source.fetched == 1
    assert stream.kinds()[0] == "register" and stream.kinds()[1] == "back_to_source_started"
    assert stream.kinds()[-1] == "back_to_source_finished"


async def test_a_download_answered_as_metadata_only_goes_to_the_origin(store: PieceStore) -> None:
    stream = FakeStream([MetadataOnly()])
    source = FakeSource()
    conductor = Conductor(deps(store, stream, FakePool({}), FakePeerRPC(), source), TASK, SPEC)

    await conductor.run()

    assert content(store) == DATA and source.fetched == 1
    assert stream.kinds() == ["register", "failed"]


# ---------------------------------------------------------------- the scheduler lost mid-download


class EndLost(FakeStream):
    """A stream that breaks as the download reports its end (the scheduler was SIGKILLed)."""

    async def flush(self, timeout: float = 10) -> None:
        if self.said and self.said[-1][0] in ("finished", "back_to_source_finished"):
            self.lost.set()
            raise SchedulerError(
                "cannot write to the scheduler stream: InvalidStateError('RPC already finished.')"
            )


@pytest.mark.parametrize("answer", [NormalTask([GOOD]), NeedBackToSource("first peer")])
async def test_a_stream_lost_as_the_download_ends_does_not_fail_it(store: PieceStore, answer: Any) -> None:
    stream = EndLost([answer])
    unreported: list[str] = []
    d = deps(store, stream, FakePool({}), FakePeerRPC(), FakeSource(), on_unreported=unreported.append)
    await Conductor(d, TASK, SPEC).run()
    assert content(store) == DATA
    meta = store.get(TASK)
    assert meta is not None and meta.state == "succeeded"
    assert unreported == [TASK]  # the daemon registers the task again


class Streams:
    """A scheduler whose streams are handed out in order (each re-register opens the next)."""

    def __init__(self, *streams: FakeStream) -> None:
        self.streams = list(streams)

    async def speaks_extensions(self) -> bool:
        return True

    async def link_for(self, task_id: str, wait: float | None) -> Streams:
        return self

    def peer_stream(self, host_id: str, task_id: str, peer_id: str) -> FakeStream:
        return self.streams.pop(0)


class GatedPool(FakePool):
    """The first ``passing`` pieces asked for come at once; the others wait for ``gate``."""

    def __init__(self, passing: int) -> None:
        super().__init__({})
        self.passing = passing
        self.gate = asyncio.Event()

    async def download_piece(
        self, ip: str, port: int, task_id: str, number: int, *a: Any, **kw: Any
    ) -> PieceInfo:
        self.passing -= 1
        if self.passing < 0:
            await self.gate.wait()
        return await super().download_piece(ip, port, task_id, number, *a, **kw)


async def test_a_stream_lost_mid_download_registers_again_and_the_transfer_goes_on(store: PieceStore) -> None:
    first, second = FakeStream([NormalTask([GOOD])]), FakeStream([NormalTask([GOOD])])
    pool = GatedPool(passing=4)
    d = dataclasses.replace(deps(store, first, pool, FakePeerRPC()), scheduler=Streams(first, second))
    conductor = Conductor(d, TASK, dataclasses.replace(SPEC, piece_length=PL))
    job = asyncio.ensure_future(conductor.run())
    while len(first.of("piece_finished")) < 4:  # noqa: ASYNC110  # polling a fake's record
        await asyncio.sleep(0.01)
    first.lost.set()  # the scheduler died: the parents still serve
    while "started" not in second.kinds():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    pool.gate.set()
    await asyncio.wait_for(job, 10)

    assert content(store) == DATA and not conductor.back_to_source
    # The new scheduler heard the peer register, start, and every piece it held, then the rest.
    kinds = second.kinds()
    assert kinds[:2] == ["register", "started"] and kinds[-1] == "finished"
    assert {n for _, n, _ in second.of("piece_finished")} == set(range(PIECES))
    assert len(first.of("piece_finished")) == 4
    assert first.closed
