"""``damselfly preheat file|image``: warm the swarm before a rollout, through the scheduler.

How it follows a preheat: ``PreheatFile`` / ``PreheatImage`` return ``Empty``
only once the job is over (the scheduler answers when every download ended,
with ``ABORTED`` and one line per failure otherwise; see
``scheduler/preheat_rpc.py``). While that call is in flight this command polls
``StatFile`` / ``StatImage`` every ``--interval`` and prints a line whenever
the picture changes (which hosts hold or are fetching which task). At the end
it prints per-task results (task ID, size from ``StatTask``, hosts that hold
it) as text, or as one JSON document with ``--json``.

Exit codes: 0 every download succeeded; 1 some download failed (or an
unexpected error); 2 bad arguments; 3 the scheduler cannot be reached; 4 the
registry or origin refused (missing tag or platform, login refused,
unreachable); 6 the preheat's ``--timeout`` passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO
from urllib.parse import urlsplit

import typer

SCHEDULER_ENV = "DAMSELFLY_SCHEDULER"
DEFAULT_SCHEDULER = "127.0.0.1:8002"
PASSWORD_ENV = "DAMSELFLY_REGISTRY_PASSWORD"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SCHEDULER, EXIT_ORIGIN, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 6
_ORIGIN_CODES = {
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "FAILED_PRECONDITION",
    "INVALID_ARGUMENT",
}

preheat_app = typer.Typer(
    help="Warm the swarm before a rollout: have seed peers (or all peers) download files or an image.",
    no_args_is_help=True,
    add_completion=False,
)


@dataclass
class Common:
    """Options shared by ``preheat file`` and ``preheat image``."""

    scheduler: str = DEFAULT_SCHEDULER
    scope: str = "single_seed_peer"
    ips: list[str] = field(default_factory=list)
    count: int | None = None
    percentage: int | None = None
    tag: str = ""
    application: str = ""
    piece_length: int | None = None
    filtered_query_params: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    concurrent_tasks: int | None = None
    concurrent_peers: int | None = None
    interval_s: float = 0.5
    json_out: bool = False


def request_fields(c: Common) -> dict[str, Any]:
    """The fields PreheatFileRequest and PreheatImageRequest share, from the options."""
    from ..api import convert

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


# --------------------------------------------------------------------------- results


@dataclass
class TaskResult:
    """One preheated task as the user sees it at the end."""

    name: str  # URL of a file, digest of an image blob
    url: str
    task_id: str
    hosts: list[str] = field(default_factory=list)  # hostnames holding it
    content_length: int | None = None

    @property
    def finished(self) -> bool:
        return bool(self.hosts)


@dataclass
class Outcome:
    code: int
    message: str = ""
    tasks: list[TaskResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.code == EXIT_OK,
                "exit_code": self.code,
                "error": self.message,
                "tasks": [
                    {
                        "name": t.name,
                        "url": t.url,
                        "task_id": t.task_id,
                        "content_length": t.content_length,
                        "hosts": t.hosts,
                    }
                    for t in self.tasks
                ],
            },
            indent=2,
        )


def exit_code_for(status_name: str) -> int:
    """A preheat RPC's gRPC status (by name) -> this command's exit code."""
    if status_name == "OK":
        return EXIT_OK
    if status_name == "UNAVAILABLE":
        return EXIT_SCHEDULER
    if status_name == "DEADLINE_EXCEEDED":
        return EXIT_TIMEOUT
    if status_name in _ORIGIN_CODES:
        return EXIT_ORIGIN
    return EXIT_FAILED


def progress_line(layers: list[tuple[str, list[tuple[str, bool]]]]) -> str:
    """``2/3 tasks held; sha256:ab12…: host-a, (host-b)`` — parentheses: still downloading."""
    held = sum(1 for _, hosts in layers if any(done for _, done in hosts))
    parts = []
    for name, hosts in layers:
        who = ", ".join(h if done else f"({h})" for h, done in hosts) or "-"
        parts.append(f"{_short(name)}: {who}")
    return f"{held}/{len(layers)} tasks held; " + "; ".join(parts)


def _short(name: str) -> str:
    if name.startswith("sha256:"):
        return name[:19] + "…"
    return name if len(name) <= 60 else "…" + name[-59:]


def _digest_of(url: str) -> str:
    last = urlsplit(url).path.rsplit("/", 1)[-1]
    return last if last.startswith("sha256:") else ""


# --------------------------------------------------------------------------- running


class _Follower:
    """Polls a Stat RPC while the preheat call runs; prints a line when the picture changes."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.last = ""

    def show(self, layers: list[tuple[str, list[tuple[str, bool]]]]) -> None:
        line = progress_line(layers)
        if line != self.last:
            self.last = line
            print(f"preheat: {line}", file=self.err, flush=True)


def _per_layer(
    response: Any, urls: list[str], names: dict[str, str]
) -> list[tuple[str, list[tuple[str, bool]]]]:
    by_url: dict[str, list[tuple[str, bool]]] = {u: [] for u in urls}
    for peer in response.peers:
        entries = getattr(peer, "cached_layers", None)
        if entries is None:
            entries = peer.cached_files
        for e in entries:
            if e.url in by_url:
                by_url[e.url].append((peer.hostname or peer.ip, e.is_finished))
    return [(names.get(u, u), sorted(by_url[u])) for u in urls]


async def _follow(waiting: Any, stat: Any, follower: _Follower, interval: float) -> None:
    """Poll ``stat()`` (a coroutine factory) every ``interval`` until ``waiting`` (an awaitable) is done."""
    waiter = asyncio.ensure_future(waiting)
    try:
        while True:
            try:
                _, layers = await stat()
                follower.show(layers)
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


async def run_image(
    c: Common,
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
    import grpc

    from .. import registry_client
    from ..api import scheduler_pb2, scheduler_pb2_grpc
    from ..errors import InvalidArgument

    try:
        ref = registry_client.parse_reference(image, scheme="http" if plain_http else "https")
        registry_client.parse_platform(platform)
        chain = [ca_pem] if ca_pem else []
    except InvalidArgument as e:
        return Outcome(EXIT_USAGE, str(e))
    fields = request_fields(c)
    auth: dict[str, Any] = {"platform": platform, "certificate_chain": chain}
    auth["insecure_skip_verify"] = insecure_skip_verify
    auth["enable_task_id_based_blob_digest"] = blob_task_id_by_digest
    if username:
        auth["username"] = username
        auth["password"] = password
    request = scheduler_pb2.PreheatImageRequest(url=ref.manifest_url, **fields, **auth)
    stat_fields = {k: v for k, v in fields.items() if k in ("tag", "application", "piece_length", "header")}
    stat_fields["filtered_query_params"] = c.filtered_query_params
    stat_request = scheduler_pb2.StatImageRequest(url=ref.manifest_url, scope=c.scope, **stat_fields, **auth)
    print(
        f"preheat: image {ref} ({platform}) via scheduler {c.scheduler}, scope {c.scope}",
        file=err,
        flush=True,
    )
    async with grpc.aio.insecure_channel(c.scheduler) as channel:
        stub: Any = scheduler_pb2_grpc.SchedulerStub(channel)

        async def stat() -> tuple[Any, list[tuple[str, list[tuple[str, bool]]]]]:
            r = await stub.StatImage(stat_request, timeout=30)
            urls = [layer.url for layer in r.image.layers]
            return r, _per_layer(r, urls, {u: _digest_of(u) or u for u in urls})

        call = stub.PreheatImage(request)
        follower = _Follower(err)
        await _follow(_wait(call), stat, follower, c.interval_s)
        code, message = await _result(call)
        tasks: list[TaskResult] = []
        if code != EXIT_ORIGIN and code != EXIT_SCHEDULER:
            try:
                r, layers = await stat()
                follower.show(layers)
                tasks = await _task_results(stub, r, c, by_digest=blob_task_id_by_digest)
            except grpc.aio.AioRpcError as e:
                message = message or f"StatImage: {e.code().name} {e.details()}"
    return Outcome(code, message, tasks)


async def run_files(c: Common, urls: list[str], *, err: TextIO = sys.stderr) -> Outcome:
    """Preheat each URL (one PreheatFile each, concurrently); follow them with StatFile."""
    import grpc

    from ..api import scheduler_pb2, scheduler_pb2_grpc
    from ..errors import InvalidArgument
    from .parsing import check_url

    try:
        for u in urls:
            check_url(u)
    except InvalidArgument as e:
        return Outcome(EXIT_USAGE, str(e))
    fields = request_fields(c)
    stat_fields = {k: v for k, v in fields.items() if k in ("tag", "application", "piece_length", "header")}
    stat_fields["filtered_query_params"] = c.filtered_query_params
    print(f"preheat: {len(urls)} file(s) via scheduler {c.scheduler}, scope {c.scope}", file=err, flush=True)
    async with grpc.aio.insecure_channel(c.scheduler) as channel:
        stub: Any = scheduler_pb2_grpc.SchedulerStub(channel)

        async def stat() -> tuple[Any, list[tuple[str, list[tuple[str, bool]]]]]:
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
        follower = _Follower(err)
        await _follow(asyncio.gather(*(_wait(call) for call in calls)), stat, follower, c.interval_s)
        results = [await _result(call) for call in calls]
        failed = [(u, r) for u, r in zip(urls, results, strict=True) if r[0] != EXIT_OK]
        code = max((r[0] for _, r in failed), default=EXIT_OK)
        message = "; ".join(f"{u}: {m}" for u, (_, m) in failed)
        tasks: list[TaskResult] = []
        if code != EXIT_SCHEDULER:
            try:
                r, layers = await stat()
                follower.show(layers)
                urls_pb = [scheduler_pb2.Layer(url=u) for u in urls]
                tasks = await _task_results(stub, r, c, by_digest=False, layers=urls_pb)
            except grpc.aio.AioRpcError as e:
                message = message or f"StatFile: {e.code().name} {e.details()}"
    return Outcome(code, message, tasks)


async def _result(call: Any) -> tuple[int, str]:
    import grpc

    try:
        await call
    except grpc.aio.AioRpcError as e:
        code = exit_code_for(e.code().name)
        details = e.details() or e.code().name
        if code == EXIT_SCHEDULER:
            details = f"the scheduler cannot be reached ({details}); pass --scheduler HOST:PORT"
        return code, details
    return EXIT_OK, ""


async def _task_results(
    stub: Any, stat: Any, c: Common, *, by_digest: bool, layers: list[Any] | None = None
) -> list[TaskResult]:
    """Per task: its ID, which hosts hold it (from the last Stat answer), its size (StatTask)."""
    from ..api import scheduler_pb2
    from ..domain import DownloadSpec
    from ..scheduler.preheat import task_id_of

    holders: dict[str, list[str]] = {}
    for peer in stat.peers:
        entries = getattr(peer, "cached_layers", None)
        if entries is None:
            entries = peer.cached_files
        for e in entries:
            if e.is_finished:
                holders.setdefault(e.url, []).append(peer.hostname or peer.ip)
    out = []
    for layer in layers if layers is not None else stat.image.layers:
        digest = _digest_of(layer.url)
        spec = DownloadSpec(
            url=layer.url,
            tag=c.tag,
            application=c.application,
            piece_length=c.piece_length,
            filtered_query_params=c.filtered_query_params or None,
            content_for_calculating_task_id=digest if by_digest and digest else "",
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


def report(outcome: Outcome, *, json_out: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print the per-task results and the error (if any); returns the exit code."""
    from ..units import human_size

    if json_out:
        print(outcome.to_json(), file=out)
    else:
        for t in outcome.tasks:
            size = human_size(t.content_length) if t.content_length is not None else "?"
            state = "ok" if t.finished else "MISSING"
            hosts = ", ".join(t.hosts) or "-"
            print(f"{state:7} {_short(t.name):22} {size:>10}  task {t.task_id[:16]}  on {hosts}", file=out)
    if outcome.message:
        print(f"preheat failed: {outcome.message}", file=err)
    elif outcome.code == EXIT_OK:
        print(f"preheat: done, {len(outcome.tasks)} task(s) warm", file=err)
    return outcome.code


# --------------------------------------------------------------------------- typer

Scheduler = Annotated[
    str, typer.Option("--scheduler", "-s", envvar=SCHEDULER_ENV, help="scheduler gRPC address HOST:PORT")
]
ScopeOpt = Annotated[
    str, typer.Option("--scope", help="single_seed_peer (default), all_seed_peers or all_peers")
]
Ips = Annotated[list[str] | None, typer.Option("--ip", help="preheat on the host(s) with this IP (repeat)")]
Count = Annotated[int | None, typer.Option("--count", help="all_peers: this many hosts (seeds first)")]
Percentage = Annotated[
    int | None, typer.Option("--percentage", help="all_peers: this share of hosts (1-100)")
]
Tag = Annotated[str, typer.Option("--tag", help="task tag (as the later downloads will use)")]
Application = Annotated[str, typer.Option("--application", help="task application")]
PieceLength = Annotated[str | None, typer.Option("--piece-length", help="piece length, e.g. 4MiB")]
Filtered = Annotated[
    list[str] | None, typer.Option("--filtered-query-param", help="query parameter left out of the task ID")
]
Header = Annotated[
    list[str] | None, typer.Option("--header", "-H", help="'Name: value' for the origin (repeat)")
]
Timeout = Annotated[
    str | None, typer.Option("--timeout", help="give up after this long, e.g. 30m (default 30m)")
]
ConcTasks = Annotated[int | None, typer.Option("--concurrent-tasks", help="tasks preheated at a time (8)")]
ConcPeers = Annotated[int | None, typer.Option("--concurrent-peers", help="hosts per task at a time (50)")]
Interval = Annotated[float, typer.Option("--interval", help="seconds between progress polls")]
JsonOut = Annotated[bool, typer.Option("--json", help="print the per-task results as JSON")]


def _common(
    scheduler: str,
    scope: str,
    ip: list[str] | None,
    count: int | None,
    percentage: int | None,
    tag: str,
    application: str,
    piece_length: str | None,
    filtered_query_param: list[str] | None,
    header: list[str] | None,
    timeout: str | None,
    concurrent_tasks: int | None,
    concurrent_peers: int | None,
    interval: float,
    json_out: bool,
) -> Common:
    from ..errors import InvalidArgument
    from ..scheduler.preheat import Scope
    from .parsing import parse_duration, parse_headers, parse_piece_length

    try:
        return Common(
            scheduler=scheduler,
            scope=Scope.parse(scope).value,
            ips=list(ip or []),
            count=count,
            percentage=percentage,
            tag=tag,
            application=application,
            piece_length=parse_piece_length(piece_length) if piece_length else None,
            filtered_query_params=list(filtered_query_param or []),
            headers=parse_headers(list(header or [])),
            timeout_s=parse_duration(timeout) if timeout else None,
            concurrent_tasks=concurrent_tasks,
            concurrent_peers=concurrent_peers,
            interval_s=max(0.05, interval),
            json_out=json_out,
        )
    except InvalidArgument as e:
        print(f"preheat: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None


@preheat_app.command("file")
def preheat_file(
    urls: Annotated[list[str], typer.Argument(help="URL(s) to preheat")],
    scheduler: Scheduler = DEFAULT_SCHEDULER,
    scope: ScopeOpt = "single_seed_peer",
    ip: Ips = None,
    count: Count = None,
    percentage: Percentage = None,
    tag: Tag = "",
    application: Application = "",
    piece_length: PieceLength = None,
    filtered_query_param: Filtered = None,
    header: Header = None,
    timeout: Timeout = None,
    concurrent_tasks: ConcTasks = None,
    concurrent_peers: ConcPeers = None,
    interval: Interval = 0.5,
    json_out: JsonOut = False,
) -> None:
    """Have the swarm download URL(s) now, so later downloads find them warm."""
    c = _common(
        scheduler, scope, ip, count, percentage, tag, application, piece_length,
        filtered_query_param, header, timeout, concurrent_tasks, concurrent_peers, interval, json_out,
    )  # fmt: skip
    outcome = asyncio.run(run_files(c, list(urls)))
    raise typer.Exit(report(outcome, json_out=c.json_out))


@preheat_app.command("image")
def preheat_image(
    image: Annotated[str, typer.Argument(help="REGISTRY/REPO:TAG (or @sha256:...)")],
    platform: Annotated[
        str, typer.Option("--platform", help="os/arch or os/arch/variant to pick from a manifest list")
    ] = "linux/amd64",
    username: Annotated[str, typer.Option("--username", "-u", help="registry user")] = "",
    password: Annotated[
        str,
        typer.Option("--password", "-p", envvar=PASSWORD_ENV, help=f"registry password (or ${PASSWORD_ENV})"),
    ] = "",
    plain_http: Annotated[
        bool, typer.Option("--plain-http", help="the registry speaks http, not https")
    ] = False,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="PEM CA that signed the registry's cert")
    ] = None,
    insecure_skip_verify: Annotated[
        bool, typer.Option("--insecure-skip-verify", help="do not verify the registry's certificate")
    ] = False,
    blob_task_id_by_digest: Annotated[
        bool,
        typer.Option(
            "--blob-task-id-by-digest/--blob-task-id-by-url",
            help="blob task IDs from the digest (the mirror's default, proxy.blobTaskIdByDigest) or the URL",
        ),
    ] = True,
    scheduler: Scheduler = DEFAULT_SCHEDULER,
    scope: ScopeOpt = "single_seed_peer",
    ip: Ips = None,
    count: Count = None,
    percentage: Percentage = None,
    tag: Tag = "",
    application: Application = "",
    piece_length: PieceLength = None,
    filtered_query_param: Filtered = None,
    header: Header = None,
    timeout: Timeout = None,
    concurrent_tasks: ConcTasks = None,
    concurrent_peers: ConcPeers = None,
    interval: Interval = 0.5,
    json_out: JsonOut = False,
) -> None:
    """Have the swarm download every blob of an image (config and layers) for one platform."""
    c = _common(
        scheduler, scope, ip, count, percentage, tag, application, piece_length,
        filtered_query_param, header, timeout, concurrent_tasks, concurrent_peers, interval, json_out,
    )  # fmt: skip
    if username and not password:
        password = os.environ.get(PASSWORD_ENV, "")
    try:
        ca_pem = ca_cert.read_bytes() if ca_cert is not None else None
    except OSError as e:
        print(f"preheat: cannot read --ca-cert: {e}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
    outcome = asyncio.run(
        run_image(
            c,
            image,
            platform=platform,
            username=username,
            password=password,
            plain_http=plain_http,
            ca_pem=ca_pem,
            insecure_skip_verify=insecure_skip_verify,
            blob_task_id_by_digest=blob_task_id_by_digest,
        )
    )
    raise typer.Exit(report(outcome, json_out=c.json_out))
