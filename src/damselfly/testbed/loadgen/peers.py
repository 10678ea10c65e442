"""One simulated daemon's side of an AnnouncePeer stream, over the real gRPC API.

:func:`drive_peer` plays a download the way a daemon does (docs/PROTOCOL.md):
register, read the answer, report started (from parents or back-to-source),
report pieces, then, at ``release``, report finished and close. The time from
writing the register to reading the answer is the latency the benchmark
reports: it is measured in the client, so it holds whatever the scheduler,
the network stack and the client's own queueing added, which is why the
generator reports its own CPU too.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from ...api import common_pb2, scheduler_pb2

PB = Any

PIECE_COST_MS = 8  # the cost a child reports for a piece from its parent


@dataclass(slots=True)
class PeerJob:
    """What one simulated peer does."""

    host_id: str
    task_id: str
    peer_id: str
    url: str
    task_index: int
    pieces: int
    piece_length: int
    piece_interval_s: float = 0.05


@dataclass
class Tally:
    """What a generator process saw, merged over its peers (owned by its event loop)."""

    latencies_ms: list[float] = field(default_factory=list)
    registered_at: list[float] = field(default_factory=list)  # wall clock of each answered register
    latencies_by_answer: dict[str, list[float]] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    unanswered: int = 0
    finished: int = 0
    sent: int = 0
    open_streams: int = 0
    peak_open_streams: int = 0
    first_register: float = 0.0  # wall clock (time.time), comparable across processes
    last_answer: float = 0.0

    def error(self, where: str, e: BaseException) -> None:
        code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else type(e).__name__
        key = f"{where}: {code}"
        self.errors[key] += 1
        if len(self.error_samples) < 10:
            details = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
            self.error_samples.append(f"{key} {details}")

    def to_json(self) -> dict[str, Any]:
        return {
            "latencies_ms": self.latencies_ms,
            "registered_at": self.registered_at,
            "latencies_by_answer": self.latencies_by_answer,
            "answers": dict(self.answers),
            "errors": dict(self.errors),
            "error_samples": self.error_samples,
            "unanswered": self.unanswered,
            "finished": self.finished,
            "sent": self.sent,
            "peak_open_streams": self.peak_open_streams,
            "first_register": self.first_register,
            "last_answer": self.last_answer,
        }


def _request(job: PeerJob, **kwargs: Any) -> PB:
    return scheduler_pb2.AnnouncePeerRequest(
        host_id=job.host_id, task_id=job.task_id, peer_id=job.peer_id, **kwargs
    )


def register_request(job: PeerJob) -> PB:
    return _request(
        job,
        register_peer_request=scheduler_pb2.RegisterPeerRequest(download=common_pb2.Download(url=job.url)),
    )


def piece_request(job: PeerJob, number: int, parent_id: str) -> PB:
    piece = common_pb2.Piece(
        number=number,
        offset=number * job.piece_length,
        length=job.piece_length,
        digest=f"crc32:{(job.task_index * 7919 + number) & 0xFFFFFFFF}",
    )
    if not parent_id:
        piece.traffic_type = common_pb2.BACK_TO_SOURCE
        return _request(
            job,
            download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                piece=piece
            ),
        )
    piece.parent_id = parent_id
    piece.traffic_type = common_pb2.REMOTE_PEER
    piece.cost.FromMilliseconds(PIECE_COST_MS)
    return _request(
        job, download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece)
    )


async def drive_peer(
    stub: Any, job: PeerJob, tally: Tally, release: asyncio.Event, answer_timeout_s: float
) -> None:
    """One download from register to finished; every outcome lands in ``tally``, nothing raises."""
    call = stub.AnnouncePeer()
    stage = ["register"]  # where the stream was when it broke, for the error report
    tally.open_streams += 1
    tally.peak_open_streams = max(tally.peak_open_streams, tally.open_streams)
    try:
        await _drive(call, job, tally, release, answer_timeout_s, stage)
    except grpc.aio.AioRpcError as e:
        tally.error(f"stream at {stage[0]}", e)
    except Exception as e:  # a generator bug must show in the report, not kill the run
        tally.error("generator", e)
    finally:
        tally.open_streams -= 1
        call.cancel()


async def _drive(
    call: Any, job: PeerJob, tally: Tally, release: asyncio.Event, answer_timeout_s: float, stage: list[str]
) -> None:
    register = register_request(job)
    registered_at = time.time()
    if not tally.first_register:
        tally.first_register = registered_at
    began = time.perf_counter()
    await call.write(register)
    tally.sent += 1
    stage[0] = "answer"
    try:
        async with asyncio.timeout(answer_timeout_s):
            answer = await call.read()
    except TimeoutError:
        tally.unanswered += 1
        return
    if answer is grpc.aio.EOF:
        tally.unanswered += 1
        tally.errors["stream ended before an answer"] += 1
        return
    elapsed_ms = (time.perf_counter() - began) * 1000.0
    tally.last_answer = max(tally.last_answer, time.time())
    kind = str(answer.WhichOneof("response"))
    tally.answers[kind] += 1
    tally.latencies_ms.append(elapsed_ms)
    tally.registered_at.append(registered_at)
    tally.latencies_by_answer.setdefault(kind, []).append(elapsed_ms)

    stage[0] = "pieces"
    back_to_source = kind == "need_back_to_source_response"
    parent_id = ""
    if kind == "normal_task_response":
        parents = answer.normal_task_response.candidate_parents
        parent_id = parents[0].id if parents else ""
        await call.write(
            _request(job, download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest())
        )
    elif back_to_source:
        await call.write(
            _request(
                job,
                download_peer_back_to_source_started_request=scheduler_pb2.DownloadPeerBackToSourceStartedRequest(),
            )
        )
    tally.sent += 1
    if kind != "empty_task_response":
        for n in range(job.pieces):
            await asyncio.sleep(job.piece_interval_s)
            await call.write(piece_request(job, n, "" if back_to_source else parent_id))
            tally.sent += 1
    await release.wait()
    stage[0] = "finish"
    if back_to_source:
        done = _request(
            job,
            download_peer_back_to_source_finished_request=scheduler_pb2.DownloadPeerBackToSourceFinishedRequest(),
        )
    else:
        done = _request(job, download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest())
    await call.write(done)
    tally.sent += 1
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass
    code = await call.code()
    if code == grpc.StatusCode.OK:
        tally.finished += 1
    else:
        tally.errors[f"finish: {code.name}"] += 1
