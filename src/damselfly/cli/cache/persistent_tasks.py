"""dfcache's client: persistent cache tasks through the local daemon (``cache import|export|delete``).

Every call goes to the daemon's unix socket (``dfdaemon.v2.DfdaemonDownload``):
``UploadPersistentCacheTask``, ``DownloadPersistentCacheTask``,
``StatPersistentCacheTask`` and ``DeletePersistentCacheTask`` (the last one a
Damselfly addition to the local API; see ``daemon/persistent_cache/rpc.py``).
The daemon does the work and talks to the scheduler; this module turns
arguments into requests and gRPC statuses into exit codes and one-line
messages. The typer commands are in :mod:`.commands`.

Exit codes (shared with dfget where the meaning matches, README "dfcache"):
0 ok, 1 unexpected, 2 usage, 3 no daemon, 4 no such persistent cache task,
5 digest mismatch, 6 timeout, 7 output path, 8 no live host holds the task.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import DamselflyError
from ...units import human_size
from ..exitcodes import DAEMON_HINT, ExitCode

CONNECT_TIMEOUT_S = 5.0


class CacheFailure(DamselflyError):
    """A failed dfcache command: the exit code and the line to print."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class CacheTaskStat:
    """A persistent cache task as ``StatPersistentCacheTask`` describes it."""

    id: str
    state: str
    content_length: int
    piece_length: int
    piece_count: int
    replicas_wanted: int
    persistent_replicas: int
    replicas: int
    ttl_s: float
    created_at: float
    tag: str = ""
    application: str = ""

    @property
    def expires_at(self) -> float:
        return self.created_at + self.ttl_s if self.ttl_s > 0 else 0.0


def stat_from_pb(pb: Any) -> CacheTaskStat:
    return CacheTaskStat(
        id=pb.id,
        state=pb.state,
        content_length=int(pb.content_length),
        piece_length=int(pb.piece_length),
        piece_count=int(pb.piece_count),
        replicas_wanted=int(pb.persistent_replica_count),
        persistent_replicas=int(pb.current_persistent_replica_count),
        replicas=int(pb.current_replica_count),
        ttl_s=pb.ttl.ToNanoseconds() / 1e9 if pb.HasField("ttl") else 0.0,
        created_at=pb.created_at.ToNanoseconds() / 1e9 if pb.HasField("created_at") else 0.0,
        tag=pb.tag,
        application=pb.application,
    )


def failure_from_status(code_name: str, details: str, *, what: str = "") -> CacheFailure:
    """Map the status a dfcache RPC ended with to an exit code (the name, e.g. ``"NOT_FOUND"``)."""
    msg = (details or code_name.lower()).strip().splitlines()[0][:500] if details else code_name.lower()
    if code_name == "UNAVAILABLE" and ("failed to connect" in msg or "socket" in msg):
        return CacheFailure(ExitCode.DAEMON_UNAVAILABLE, f"cannot reach the daemon ({msg}); {DAEMON_HINT}")
    if code_name == "NOT_FOUND":
        return CacheFailure(ExitCode.ORIGIN, f"{what + ': ' if what else ''}{msg}")
    if code_name == "FAILED_PRECONDITION":
        return CacheFailure(ExitCode.NO_PARENT, msg)
    if code_name == "DATA_LOSS":
        return CacheFailure(ExitCode.DIGEST_MISMATCH, f"digest mismatch: {msg}")
    if code_name == "DEADLINE_EXCEEDED":
        return CacheFailure(ExitCode.TIMEOUT, f"timed out: {msg}")
    if code_name == "INVALID_ARGUMENT":
        code = ExitCode.OUTPUT if "output" in msg.lower() else ExitCode.USAGE
        return CacheFailure(code, f"invalid argument: {msg}")
    if code_name == "UNAVAILABLE":
        return CacheFailure(ExitCode.UNEXPECTED, f"scheduler unavailable: {msg}")
    return CacheFailure(ExitCode.UNEXPECTED, f"daemon error ({code_name}): {msg}")


class LocalDaemon:
    """The daemon's unix socket, for one dfcache command (``async with``)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._channel: Any = None
        self.stub: Any = None

    async def __aenter__(self) -> LocalDaemon:
        import grpc

        from ...api import dfdaemon_pb2_grpc

        if not self.socket.exists():
            raise CacheFailure(
                ExitCode.DAEMON_UNAVAILABLE, f"no daemon socket at {self.socket}; {DAEMON_HINT}"
            )
        self._channel = grpc.aio.insecure_channel(f"unix://{self.socket}")
        try:
            await asyncio.wait_for(self._channel.channel_ready(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            await self._channel.close()
            raise CacheFailure(
                ExitCode.DAEMON_UNAVAILABLE, f"the daemon at {self.socket} does not answer; {DAEMON_HINT}"
            ) from None
        self.stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(self._channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()

    async def call(self, method: str, request: Any, *, timeout: float | None = None, what: str = "") -> Any:
        import grpc

        try:
            if method == "DeletePersistentCacheTask":
                from google.protobuf import empty_pb2

                rpc = self._channel.unary_unary(
                    "/dfdaemon.v2.DfdaemonDownload/DeletePersistentCacheTask",
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=empty_pb2.Empty.FromString,
                )
                return await rpc(request, timeout=timeout)
            return await getattr(self.stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise failure_from_status(e.code().name, e.details() or "", what=what) from None


async def import_file(
    socket: Path,
    path: Path,
    *,
    task_id: str = "",
    tag: str = "",
    application: str = "",
    ttl_s: float,
    replicas: int,
    piece_length: int | None = None,
    wait_s: float = 0.0,
    on_wait: Any = None,
) -> CacheTaskStat:
    """Import ``path``; with ``wait_s``, wait up to that long for every replica, then stat again."""
    from ...api import dfdaemon_pb2
    from ...api.convert import duration

    request = dfdaemon_pb2.UploadPersistentCacheTaskRequest(
        path=str(path),
        persistent_replica_count=replicas,
        tag=tag or None,
        application=application or None,
        ttl=duration(ttl_s),
        content_for_calculating_task_id=task_id or None,
        piece_length=piece_length,
    )
    async with LocalDaemon(socket) as daemon:
        stat = stat_from_pb(await daemon.call("UploadPersistentCacheTask", request, what="import"))
        deadline = time.monotonic() + wait_s
        while stat.persistent_replicas < stat.replicas_wanted and time.monotonic() < deadline:
            if on_wait is not None:
                on_wait(stat)
            await asyncio.sleep(0.3)
            stat = stat_from_pb(
                await daemon.call(
                    "StatPersistentCacheTask", dfdaemon_pb2.StatPersistentCacheTaskRequest(task_id=stat.id)
                )
            )
        return stat


async def export(
    socket: Path,
    task_id: str,
    output: Path,
    *,
    tag: str = "",
    application: str = "",
    timeout_s: float | None = None,
    digest: str = "",
    progress: Any = None,
) -> int:
    """Fetch the task to ``output`` (written by the daemon, atomically); returns its size.

    ``progress`` is a dfget progress sink (``started(total)``, ``advance(n)``).
    """
    import grpc

    from ...api import dfdaemon_pb2
    from ...api.convert import duration

    request = dfdaemon_pb2.DownloadPersistentCacheTaskRequest(
        task_id=task_id,
        persistent=False,
        tag=tag or None,
        application=application or None,
        output_path=str(output),
        digest=digest or None,
    )
    if timeout_s:
        request.timeout.CopyFrom(duration(timeout_s))
    size = 0
    async with LocalDaemon(socket) as daemon:
        try:
            async for msg in daemon.stub.DownloadPersistentCacheTask(request):
                if msg.HasField("download_persistent_cache_task_started_response"):
                    size = int(msg.download_persistent_cache_task_started_response.content_length)
                    if progress is not None:
                        progress.started(size)
                elif progress is not None and msg.HasField("download_piece_finished_response"):
                    progress.advance(int(msg.download_piece_finished_response.piece.length))
        except grpc.aio.AioRpcError as e:
            raise failure_from_status(e.code().name, e.details() or "", what="export") from None
    return size


async def stat(socket: Path, task_id: str) -> CacheTaskStat:
    from ...api import dfdaemon_pb2

    async with LocalDaemon(socket) as daemon:
        pb = await daemon.call(
            "StatPersistentCacheTask",
            dfdaemon_pb2.StatPersistentCacheTaskRequest(task_id=task_id),
            what="stat",
        )
    return stat_from_pb(pb)


async def delete(socket: Path, task_id: str) -> None:
    from ...api import dfdaemon_pb2

    async with LocalDaemon(socket) as daemon:
        await daemon.call(
            "DeletePersistentCacheTask",
            dfdaemon_pb2.DeletePersistentCacheTaskRequest(task_id=task_id),
            timeout=120,
            what="delete",
        )


def _duration_text(s: float) -> str:
    s = max(0.0, s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{s:.0f}s"


def render(s: CacheTaskStat, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [
        f"id        {s.id}",
        f"state     {s.state}",
        f"size      {human_size(s.content_length)} ({s.content_length} bytes, {s.piece_count} piece(s)"
        f" of {human_size(s.piece_length)})",
        f"replicas  {s.persistent_replicas} of {s.replicas_wanted} persistent; {s.replicas} cop(ies) in all",
    ]
    if s.ttl_s > 0:
        lines.append(f"ttl       {_duration_text(s.ttl_s)}, expires in {_duration_text(s.expires_at - now)}")
    if s.tag:
        lines.append(f"tag       {s.tag}")
    if s.application:
        lines.append(f"app       {s.application}")
    return "\n".join(lines)


def as_json(s: CacheTaskStat) -> str:
    return json.dumps({**asdict(s), "expires_at": s.expires_at}, indent=2)


def check_import_path(text: str) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(text)))
    if not path.is_file():
        raise CacheFailure(ExitCode.USAGE, f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise CacheFailure(ExitCode.USAGE, f"cannot read {path}")
    return path
