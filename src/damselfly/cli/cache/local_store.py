"""What the local daemon's store holds, for ``damselfly cache stat`` (no ID, or an ID it stores).

Reads the daemon's local API on its unix socket: ``DfdaemonDownload.ListLocalTasks``
(or ``StatLocalTask`` for one task). ``StatLocalTaskResponse`` has no field
for bytes on disk, state or last access, so the daemon sends those in the
``x-damselfly-store`` trailing metadata (JSON); see ``daemon/service.py``.
:func:`as_json` is ``cache stat --json``'s document (the fields of
:class:`StoreStats`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...units import human_size


@dataclass
class TaskStat:
    """One task of the local store, as ``cache stat`` shows it."""

    task_id: str
    url: str = ""
    state: str = ""
    content_length: int = 0
    piece_length: int = 0
    disk_bytes: int = 0
    pieces: int = 0
    piece_count: int | None = None
    accessed_at: float = 0.0
    in_use: bool = False
    uploaded_pieces: int = 0


@dataclass
class StoreStats:
    """The store's usage against its GC capacity, and its tasks."""

    usage: int = 0
    capacity: int = 0
    tasks: list[TaskStat] = field(default_factory=list)


async def fetch_stats(socket: Path | str, *, task_id: str | None = None, timeout: float = 10.0) -> StoreStats:
    """The store's usage from the daemon at ``socket``; raises DaemonUnavailable / NotFound."""
    import grpc

    from ...api import dfdaemon_pb2, dfdaemon_pb2_grpc
    from ...errors import DaemonUnavailable, NotFound

    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        stub: Any = dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
        try:
            if task_id:
                call = stub.StatLocalTask(dfdaemon_pb2.StatLocalTaskRequest(task_id=task_id), timeout=timeout)
                responses = [await call]
            else:
                call = stub.ListLocalTasks(dfdaemon_pb2.ListLocalTasksRequest(), timeout=timeout)
                responses = list((await call).tasks)
            trailer = dict(await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(e.details() or f"task {task_id} not found") from None
            raise DaemonUnavailable(f"the daemon at {socket} did not answer: {e.details()}") from None
    extra = json.loads(trailer.get("x-damselfly-store", "{}") or "{}")
    per_task = extra.get("tasks", {})
    stats = StoreStats(usage=int(extra.get("usage", 0)), capacity=int(extra.get("capacity", 0)))
    for r in responses:
        x = per_task.get(r.task_id, {})
        stats.tasks.append(
            TaskStat(
                task_id=r.task_id,
                url=str(x.get("url", "")),
                state=str(x.get("state", "")),
                content_length=int(r.content_length),
                piece_length=int(r.piece_length),
                disk_bytes=int(x.get("bytes", 0)),
                pieces=int(x.get("pieces", 0)),
                piece_count=x.get("piece_count"),
                accessed_at=float(x.get("accessed_at", 0.0)),
                in_use=bool(x.get("in_use", False)),
                uploaded_pieces=int(r.uploaded_count),
            )
        )
    return stats


def _ago(ts: float, now: float) -> str:
    if ts <= 0:
        return "-"
    s = max(0.0, now - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def render(stats: StoreStats) -> str:
    """The table ``damselfly cache stat`` prints: one task a line, then the store's usage."""
    now = time.time()
    lines = [
        f"{'TASK':<14} {'STATE':<10} {'SIZE':>10} {'ON DISK':>10} {'PIECES':>9} {'USED':>9} {'UP':>5}  URL"
    ]
    for t in stats.tasks:
        pieces = f"{t.pieces}/{t.piece_count if t.piece_count is not None else '?'}"
        state = t.state + ("*" if t.in_use else "")
        lines.append(
            f"{t.task_id[:12] + '..':<14} {state:<10} {human_size(t.content_length):>10} "
            f"{human_size(t.disk_bytes):>10} {pieces:>9} {_ago(t.accessed_at, now):>9} "
            f"{t.uploaded_pieces:>5}  {t.url}"
        )
    pct = (
        f" ({100 * stats.usage / stats.capacity:.1f}% of {human_size(stats.capacity)})"
        if stats.capacity
        else ""
    )
    lines.append(f"{len(stats.tasks)} task(s), {human_size(stats.usage)} on disk{pct}; * = in use")
    return "\n".join(lines)


def as_json(stats: StoreStats) -> str:
    return json.dumps(asdict(stats), indent=2)
