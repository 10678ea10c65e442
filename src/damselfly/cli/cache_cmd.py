"""``damselfly cache``: the local store (``stat``) and persistent cache tasks (dfcache).

``import`` / ``export`` / ``delete`` and ``stat ID`` for persistent cache tasks
are in :mod:`.dfcache`. ``stat`` serves both: with no argument it lists the
local store; with an ID (or an ``--id`` name) it shows the persistent cache
task of that ID cluster-wide if the scheduler knows one, else the local
store's task of that ID.


Reads the daemon's local API on its unix socket: ``DfdaemonDownload.ListLocalTasks``
(or ``StatLocalTask`` for one task). ``StatLocalTaskResponse`` has no field
for bytes on disk, state or last access, so the daemon sends those in the
``x-damselfly-store`` trailing metadata (JSON); see ``daemon/service.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from .parsing import DEFAULT_ENDPOINT, ENDPOINT_ENV

cache_app = typer.Typer(
    help="The local daemon's cache, and persistent cache tasks in the cluster (dfcache).",
    no_args_is_help=True,
    add_completion=False,
)


@dataclass
class TaskStat:
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
    usage: int = 0
    capacity: int = 0
    tasks: list[TaskStat] = field(default_factory=list)


async def fetch_stats(socket: Path | str, *, task_id: str | None = None, timeout: float = 10.0) -> StoreStats:
    """The store's usage from the daemon at ``socket``; raises DaemonUnavailable / NotFound."""
    import grpc

    from ..api import dfdaemon_pb2, dfdaemon_pb2_grpc
    from ..errors import DaemonUnavailable, NotFound

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
    from ..units import human_size

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
    from dataclasses import asdict

    return json.dumps(asdict(stats), indent=2)


@cache_app.command("stat")
def stat(
    task_id: Annotated[str | None, typer.Argument(help="one task ID; all tasks when omitted")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    endpoint: Annotated[
        str,
        typer.Option(
            "--endpoint", "-e", envvar=ENDPOINT_ENV, help="the daemon's unix socket (path or unix:///path)"
        ),
    ] = DEFAULT_ENDPOINT,
) -> None:
    """Store usage per task (size, bytes on disk, pieces, last use, uploads); or one persistent cache task."""
    from ..errors import DamselflyError
    from . import dfcache
    from .exitcodes import ExitCode
    from .parsing import default_endpoint, normalize_endpoint

    try:
        socket = normalize_endpoint(endpoint or default_endpoint())
        if not Path(socket).exists():
            typer.echo(f"damselfly cache: no daemon socket at {socket}", err=True)
            raise typer.Exit(1)
        if task_id:
            try:
                pc = asyncio.run(dfcache.stat(socket, task_id))
            except dfcache.CacheFailure as e:
                if e.code not in (ExitCode.ORIGIN, ExitCode.UNEXPECTED):
                    raise
            else:
                typer.echo(dfcache.as_json(pc) if json_out else dfcache.render(pc))
                return
        stats = asyncio.run(fetch_stats(socket, task_id=task_id))
    except dfcache.CacheFailure as e:
        typer.echo(f"damselfly cache: {e.message}", err=True)
        raise typer.Exit(int(e.code)) from None
    except DamselflyError as e:
        typer.echo(f"damselfly cache: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(as_json(stats) if json_out else render(stats))


# -- dfcache: persistent cache tasks ------------------------------------------------------

EndpointOption = Annotated[
    str,
    typer.Option(
        "--endpoint", "-e", envvar=ENDPOINT_ENV, help="the daemon's unix socket (path or unix:///path)"
    ),
]


def _run(fn: Any) -> Any:
    """Run a dfcache coroutine factory; a failure prints one line and exits with its code."""
    from ..errors import InvalidArgument, StorageError
    from . import dfcache
    from .exitcodes import ExitCode

    try:
        return asyncio.run(fn())
    except dfcache.CacheFailure as e:
        typer.echo(f"damselfly cache: {e.message}", err=True)
        raise typer.Exit(int(e.code)) from None
    except StorageError as e:
        typer.echo(f"damselfly cache: {e}", err=True)
        raise typer.Exit(int(ExitCode.OUTPUT)) from None
    except InvalidArgument as e:
        typer.echo(f"damselfly cache: {e}", err=True)
        raise typer.Exit(int(ExitCode.USAGE)) from None
    except KeyboardInterrupt:
        raise typer.Exit(int(ExitCode.CANCELLED)) from None


def _socket(endpoint: str) -> Path:
    from .parsing import default_endpoint, normalize_endpoint

    return normalize_endpoint(endpoint or default_endpoint())


@cache_app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="the file to put into the swarm")],
    task_id: Annotated[
        str | None,
        typer.Option("--id", help="name the task (64 hex digits: used as is) instead of hashing the content"),
    ] = None,
    tag: Annotated[str, typer.Option("--tag", help="part of the task ID: same bytes, another task")] = "",
    application: Annotated[str, typer.Option("--application", help="part of the task ID")] = "",
    ttl: Annotated[
        str, typer.Option("--ttl", help="removed from every host after this (90s, 30m, 2h)")
    ] = "1h",
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="hosts that keep a persistent copy, this one included")
    ] = 2,
    piece_length: Annotated[
        str | None, typer.Option("--piece-length", help="e.g. 4MiB (default: by size)")
    ] = None,
    wait: Annotated[
        str, typer.Option("--wait", help="how long to wait for the replicas (0: do not wait)")
    ] = "2m",
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
) -> None:
    """Put a local file into the swarm as a persistent cache task (no origin), replicated to N hosts."""
    from ..errors import InvalidArgument
    from . import dfcache
    from .parsing import parse_duration, parse_piece_length

    try:
        path = dfcache.check_import_path(file)
        ttl_s = parse_duration(ttl)
        wait_s = 0.0 if wait.strip() in ("0", "0s") else parse_duration(wait)
        pl = parse_piece_length(piece_length) if piece_length else None
    except dfcache.CacheFailure as e:
        typer.echo(f"damselfly cache: {e.message}", err=True)
        raise typer.Exit(int(e.code)) from None
    except InvalidArgument as e:
        typer.echo(f"damselfly cache: {e}", err=True)
        raise typer.Exit(2) from None
    socket = _socket(endpoint)
    result = _run(
        lambda: dfcache.import_file(
            socket, path, task_id=task_id or "", tag=tag, application=application,
            ttl_s=ttl_s, replicas=replicas, piece_length=pl, wait_s=wait_s,
        )
    )  # fmt: skip
    if json_out:
        typer.echo(dfcache.as_json(result))
        return
    typer.echo(result.id)
    if result.persistent_replicas < result.replicas_wanted:
        typer.echo(
            f"damselfly cache: {result.persistent_replicas} of {result.replicas_wanted} replicas so far; "
            "the scheduler keeps placing the others (see `damselfly cache stat ID`)",
            err=True,
        )


@cache_app.command("export")
def export_(
    task_id: Annotated[str, typer.Argument(help="the task ID import printed (or the --id name)")],
    output: Annotated[str, typer.Option("--output", "-O", help="where to write the file")],
    tag: Annotated[str, typer.Option("--tag", help="the tag given to import with an --id name")] = "",
    application: Annotated[str, typer.Option("--application", help="as given to import")] = "",
    timeout: Annotated[str | None, typer.Option("--timeout", help="give up after this (e.g. 10m)")] = None,
    digest: Annotated[
        str | None, typer.Option("--digest", help="sha256:<hex> (or sha512:, crc32:) to verify")
    ] = None,
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
) -> None:
    """Fetch a persistent cache task from the swarm to a file (complete and verified, or not at all)."""
    from ..errors import InvalidArgument, StorageError
    from . import dfcache
    from .parsing import check_output, parse_digest, parse_duration

    try:
        out = check_output(output)
        timeout_s = parse_duration(timeout) if timeout else None
        dg = parse_digest(digest)
    except StorageError as e:
        typer.echo(f"damselfly cache: {e}", err=True)
        raise typer.Exit(7) from None
    except InvalidArgument as e:
        typer.echo(f"damselfly cache: {e}", err=True)
        raise typer.Exit(2) from None
    import sys

    from .get import NoProgress, RichProgress

    socket = _socket(endpoint)
    sink = RichProgress(task_id[:16], sys.stderr) if sys.stderr.isatty() else NoProgress()
    try:
        size = _run(
            lambda: dfcache.export(
                socket, task_id, out, tag=tag, application=application, timeout_s=timeout_s,
                digest=dg, progress=sink,
            )
        )  # fmt: skip
    finally:
        sink.close()
    typer.echo(f"{out} ({size} bytes)")


@cache_app.command("delete")
def delete_(
    task_id: Annotated[str, typer.Argument(help="the persistent cache task to remove from every host")],
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
) -> None:
    """Remove a persistent cache task from every host that holds it."""
    from . import dfcache

    socket = _socket(endpoint)
    _run(lambda: dfcache.delete(socket, task_id))
    typer.echo(f"deleted {task_id}")
