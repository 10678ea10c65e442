"""The gRPC side of ``damselfly preheat``: the preheat call, Stat polls while it runs, per-task results.

``PreheatFile`` / ``PreheatImage`` answer only once the job is over, so while
the call is in flight :func:`_follow` polls ``StatFile`` / ``StatImage`` and
hands each picture to a :class:`~.report.ProgressPrinter`. When the call ends,
its status becomes the exit code (:func:`exit_code_for`), and one last Stat plus
a ``StatTask`` per task fill the :class:`~.report.Outcome`. Flags that are
wrong (a bad reference, platform or URL) end it with exit code 2 before any
network.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO
from urllib.parse import urlsplit

from ..exitcodes import ExitCode
from .options import PreheatOptions
from .report import Layers, Outcome, ProgressPrinter, TaskResult

_ORIGIN_CODES = {
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
}
# The request fields a Stat call shares with its preheat call.
_STAT_FIELDS = ("tag", "application", "piece_length", "header")

# A Stat poll: the answer (for the per-task results at the end) and its progress picture.
Stat = Callable[[], Awaitable[tuple[Any, Layers]]]


def request_fields(c: PreheatOptions) -> dict[str, Any]:
    """The fields PreheatFileRequest and PreheatImageRequest share, from the options."""
    from ...api import convert

    out: dict[str, Any] = {
        "scope": c.scope,
        "ips": c.ips,
        "header": c.headers,
        "filtered_query_params": c.filtered_query_params,
    }
    if c.tag:
        out["tag"] = c.tag
    if c.application:
        out["application"] = c.application
    if c.piece_length:
        out["piece_length"] = c.piece_length
    if c.count is not None:
        out["count"] = c.count
    if c.percentage is not None:
        out["percentage"] = c.percentage
    if c.concurrent_tasks:
        out["concurrent_task_count"] = c.concurrent_tasks
    if c.concurrent_peers:
        out["concurrent_peer_count"] = c.concurrent_peers
    if c.timeout_s:
        out["timeout"] = convert.duration(c.timeout_s)
    return out


def _stat_fields(c: PreheatOptions, fields: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in fields.items() if k in _STAT_FIELDS}
    out["filtered_query_params"] = c.filtered_query_params
    return out


def exit_code_for(status_name: str) -> ExitCode:
    """A preheat RPC's gRPC status (by name) -> this command's exit code."""
    if status_name == "OK":
        return ExitCode.OK
    if status_name == "UNAVAILABLE":
        return ExitCode.SCHEDULER_UNAVAILABLE
    if status_name == "DEADLINE_EXCEEDED":
        return ExitCode.TIMEOUT
    if status_name in _ORIGIN_CODES:
        return ExitCode.ORIGIN
    return ExitCode.FAILED


def _digest_of(url: str) -> str:
    last = urlsplit(url).path.rsplit("/", 1)[-1]
    return last if last.startswith("sha256:") else ""


def _cached_entries(peer: Any) -> Any:
    """A StatImage peer lists ``cached_layers``; a StatFile peer, ``cached_files``."""
    entries = getattr(peer, "cached_layers", None)
    return peer.cached_files if entries is None else entries


def _per_layer(response: Any, urls: list[str], names: dict[str, str]) -> Layers:
    by_url: dict[str, list[tuple[str, bool]]] = {u: [] for u in urls}
    for peer in response.peers:
        for e in _cached_entries(peer):
            if e.url in by_url:
                by_url[e.url].append((peer.hostname or peer.ip, e.is_finished))
    return [(names.get(u, u), sorted(by_url[u])) for u in urls]


async def _follow(waiting: Any, stat: Stat, printer: ProgressPrinter, interval: float) -> None:
    """Poll ``stat()`` every ``interval`` until ``waiting`` (an awaitable) is done."""
    waiter = asyncio.ensure_future(waiting)
    try:
        while True:
            try:
                _, layers = await stat()
                printer.show(layers)
            except Exception:  # progress is best effort; the preheat call's own outcome decides
                pass
            done, _ = await asyncio.wait([waiter], timeout=interval)
            if done:
                return
    finally:
        if not waiter.done():
            waiter.cancel()


async def _wait(call: Any) -> None:
    try:
        await call
    except Exception:
        return


async def _result(call: Any) -> tuple[ExitCode, str]:
    import grpc

    try:
        await call
    except grpc.aio.AioRpcError as e:
        code = exit_code_for(e.code().name)
        details = e.details() or e.code().name
        if code == ExitCode.SCHEDULER_UNAVAILABLE:
            details = f"the scheduler cannot be reached ({details}); pass --scheduler HOST:PORT"
        return code, details
    return ExitCode.OK, ""


async def _finish(
    stub: Any,
    c: PreheatOptions,
    stat: Stat,
    printer: ProgressPrinter,
    *,
    stat_name: str,
    by_digest: bool,
    layers: Callable[[Any], list[Any]],
) -> tuple[list[TaskResult], str]:
    """The last Stat (printed), then per-task results; a failed Stat costs only the results."""
    import grpc

    try:
        r, picture = await stat()
        printer.show(picture)
        return await _task_results(stub, r, c, by_digest=by_digest, layers=layers(r)), ""
    except grpc.aio.AioRpcError as e:
        return [], f"{stat_name}: {e.code().name} {e.details()}"


async def run_image(
    c: PreheatOptions,
    image: str,
    *,
    platform: str,
    username: str,
    password: str,
    plain_http: bool,
    ca_pem: bytes | None,
    insecure_skip_verify: bool,
    blob_task_id_by_digest: bool,
    err: TextIO = sys.stderr,
) -> Outcome:
    """Preheat ``image`` through the scheduler at ``c.scheduler``; follow it with StatImage."""

    from ... import registry_client
    from ...api import scheduler_pb2, scheduler_pb2_grpc
    from ...errors import InvalidArgument
    from ...security.tls import make_channel

    try:
        ref = registry_client.parse_reference(image, scheme="http" if plain_http else "https")
        registry_client.parse_platform(platform)
        chain = [ca_pem] if ca_pem else []
    except InvalidArgument as e:
        return Outcome(ExitCode.USAGE, str(e))
    fields = request_fields(c)
    auth: dict[str, Any] = {"platform": platform, "certificate_chain": chain}
    auth["insecure_skip_verify"] = insecure_skip_verify
    auth["enable_task_id_based_blob_digest"] = blob_task_id_by_digest
    if username:
        auth["username"] = username
        auth["password"] = password
    request = scheduler_pb2.PreheatImageRequest(url=ref.manifest_url, **fields, **auth)
    stat_request = scheduler_pb2.StatImageRequest(
        url=ref.manifest_url, scope=c.scope, **_stat_fields(c, fields), **auth
    )
    print(
        f"preheat: image {ref} ({platform}) via scheduler {c.scheduler}, scope {c.scope}",
        file=err,
        flush=True,
    )
    async with make_channel(c.scheduler, c.tls) as channel:
        stub: Any = scheduler_pb2_grpc.SchedulerStub(channel)

        async def stat() -> tuple[Any, Layers]:
            r = await stub.StatImage(stat_request, timeout=30)
            urls = [layer.url for layer in r.image.layers]
            return r, _per_layer(r, urls, {u: _digest_of(u) or u for u in urls})

        call = stub.PreheatImage(request)
        printer = ProgressPrinter(err)
        await _follow(_wait(call), stat, printer, c.interval_s)
        code, message = await _result(call)
        tasks: list[TaskResult] = []
        if code not in (ExitCode.ORIGIN, ExitCode.SCHEDULER_UNAVAILABLE):
            tasks, stat_error = await _finish(
                stub, c, stat, printer, stat_name="StatImage", by_digest=blob_task_id_by_digest,
                layers=lambda r: list(r.image.layers),
            )  # fmt: skip
            message = message or stat_error
    return Outcome(code, message, tasks)


async def run_files(c: PreheatOptions, urls: list[str], *, err: TextIO = sys.stderr) -> Outcome:
    """Preheat each URL (one PreheatFile each, concurrently); follow them with StatFile."""

    from ...api import scheduler_pb2, scheduler_pb2_grpc
    from ...errors import InvalidArgument
    from ...security.tls import make_channel
    from ..parsing import check_url

    try:
        for u in urls:
            check_url(u)
    except InvalidArgument as e:
        return Outcome(ExitCode.USAGE, str(e))
    fields = request_fields(c)
    stat_fields = _stat_fields(c, fields)
    print(f"preheat: {len(urls)} file(s) via scheduler {c.scheduler}, scope {c.scope}", file=err, flush=True)
    async with make_channel(c.scheduler, c.tls) as channel:
        stub: Any = scheduler_pb2_grpc.SchedulerStub(channel)

        async def stat() -> tuple[Any, Layers]:
            answers = await asyncio.gather(
                *(
                    stub.StatFile(scheduler_pb2.StatFileRequest(url=u, **stat_fields), timeout=30)
                    for u in urls
                )
            )
            layers = [_per_layer(a, [u], {})[0] for a, u in zip(answers, urls, strict=True)]
            merged = scheduler_pb2.StatFileResponse(peers=[p for a in answers for p in a.peers])
            return merged, layers

        calls = [stub.PreheatFile(scheduler_pb2.PreheatFileRequest(url=u, **fields)) for u in urls]
        printer = ProgressPrinter(err)
        await _follow(asyncio.gather(*(_wait(call) for call in calls)), stat, printer, c.interval_s)
        results = [await _result(call) for call in calls]
        failed = [(u, r) for u, r in zip(urls, results, strict=True) if r[0] != ExitCode.OK]
        code = max((r[0] for _, r in failed), default=ExitCode.OK)
        message = "; ".join(f"{u}: {m}" for u, (_, m) in failed)
        tasks: list[TaskResult] = []
        if code != ExitCode.SCHEDULER_UNAVAILABLE:
            tasks, stat_error = await _finish(
                stub, c, stat, printer, stat_name="StatFile", by_digest=False,
                layers=lambda r: [scheduler_pb2.Layer(url=u) for u in urls],
            )  # fmt: skip
            message = message or stat_error
    return Outcome(code, message, tasks)


async def _task_results(
    stub: Any, stat: Any, c: PreheatOptions, *, by_digest: bool, layers: list[Any]
) -> list[TaskResult]:
    """Per task: its ID, which hosts hold it (from the last Stat answer), its size (StatTask)."""
    from ...api import scheduler_pb2
    from ...domain import DownloadSpec
    from ...scheduler.preheat import task_id_of

    holders: dict[str, list[str]] = {}
    for peer in stat.peers:
        for e in _cached_entries(peer):
            if e.is_finished:
                holders.setdefault(e.url, []).append(peer.hostname or peer.ip)
    out = []
    for layer in layers:
        digest = _digest_of(layer.url)
        spec = DownloadSpec(
            url=layer.url,
            tag=c.tag,
            application=c.application,
            piece_length=c.piece_length,
            filtered_query_params=c.filtered_query_params or None,
            enable_task_id_based_blob_digest=by_digest,
        )
        result = TaskResult(
            digest or layer.url, layer.url, task_id_of(spec), sorted(holders.get(layer.url, []))
        )
        try:
            task = await stub.StatTask(scheduler_pb2.StatTaskRequest(task_id=result.task_id), timeout=10)
            if task.state == "Succeeded":
                result.content_length = task.content_length
        except Exception:  # the size is a nicety
            pass
        out.append(result)
    return out
