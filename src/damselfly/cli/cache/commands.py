"""The typer commands ``damselfly cache stat|import|export|delete``: flags in, one line or a table out.

What they ask of the daemon is in the two clients beside this module:
:mod:`.local_store` (``stat`` with no ID: what this daemon's store holds) and
:mod:`.persistent_tasks` (``import`` / ``export`` / ``delete`` and ``stat ID``:
persistent cache tasks, dfcache). ``stat`` with an ID (or an ``--id`` name)
shows the persistent cache task of that ID cluster-wide if the scheduler knows
one, else the local store's task of that ID. Failures exit with the codes of
:class:`~damselfly.cli.exitcodes.ExitCode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from ...errors import DamselflyError, InvalidArgument, StorageError
from ..exitcodes import ExitCode
from ..parsing import DEFAULT_ENDPOINT, ENDPOINT_ENV, default_endpoint, normalize_endpoint
from . import local_store, persistent_tasks
from .persistent_tasks import CacheFailure

T = TypeVar("T")

cache_app = typer.Typer(
    help="The local daemon's cache, and persistent cache tasks in the cluster (dfcache).",
    no_args_is_help=True,
    add_completion=False,
)

EndpointOption = Annotated[
    str,
    typer.Option(
        "--endpoint", "-e", envvar=ENDPOINT_ENV, help="the daemon's unix socket (path or unix:///path)"
    ),
]


def _fail(message: str, code: ExitCode) -> NoReturn:
    typer.echo(f"damselfly cache: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _exit_on_failure() -> Iterator[None]:
    """A failure prints one line and exits with its code (its own, 7 for the output, 2 for usage)."""
    try:
        yield
    except CacheFailure as e:
        _fail(e.message, e.code)
    except StorageError as e:
        _fail(str(e), ExitCode.OUTPUT)
    except InvalidArgument as e:
        _fail(str(e), ExitCode.USAGE)
    except KeyboardInterrupt:
        raise typer.Exit(ExitCode.CANCELLED) from None


def _run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine factory of :mod:`.persistent_tasks`; a failure prints one line and exits."""
    with _exit_on_failure():
        return asyncio.run(fn())


def _socket(endpoint: str) -> Path:
    return normalize_endpoint(endpoint or default_endpoint())


@cache_app.command("stat")
def stat(
    task_id: Annotated[str | None, typer.Argument(help="one task ID; all tasks when omitted")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    endpoint: EndpointOption = DEFAULT_ENDPOINT,
) -> None:
    """Store usage per task (size, bytes on disk, pieces, last use, uploads); or one persistent cache task."""
    try:
        socket = _socket(endpoint)
        if not Path(socket).exists():
            _fail(f"no daemon socket at {socket}", ExitCode.UNEXPECTED)
        if task_id:
            try:
                pc = asyncio.run(persistent_tasks.stat(socket, task_id))
            except CacheFailure as e:
                if e.code not in (ExitCode.ORIGIN, ExitCode.UNEXPECTED):
                    raise
            else:
                typer.echo(persistent_tasks.as_json(pc) if json_out else persistent_tasks.render(pc))
                return
        stats = asyncio.run(local_store.fetch_stats(socket, task_id=task_id))
    except CacheFailure as e:
        _fail(e.message, e.code)
    except DamselflyError as e:
        _fail(str(e), ExitCode.UNEXPECTED)
    typer.echo(local_store.as_json(stats) if json_out else local_store.render(stats))


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
    from ..parsing import parse_duration, parse_piece_length

    with _exit_on_failure():
        path = persistent_tasks.check_import_path(file)
        ttl_s = parse_duration(ttl)
        wait_s = 0.0 if wait.strip() in ("0", "0s") else parse_duration(wait)
        pl = parse_piece_length(piece_length) if piece_length else None
    socket = _socket(endpoint)
    result = _run(
        lambda: persistent_tasks.import_file(
            socket, path, task_id=task_id or "", tag=tag, application=application,
            ttl_s=ttl_s, replicas=replicas, piece_length=pl, wait_s=wait_s,
        )
    )  # fmt: skip
    if json_out:
        typer.echo(persistent_tasks.as_json(result))
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
    from ..get import NoProgress, RichProgress
    from ..parsing import check_output, parse_digest, parse_duration

    with _exit_on_failure():
        out = check_output(output)
        timeout_s = parse_duration(timeout) if timeout else None
        dg = parse_digest(digest)

    socket = _socket(endpoint)
    sink = RichProgress(task_id[:16], sys.stderr) if sys.stderr.isatty() else NoProgress()
    try:
        size = _run(
            lambda: persistent_tasks.export(
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
    socket = _socket(endpoint)
    _run(lambda: persistent_tasks.delete(socket, task_id))
    typer.echo(f"deleted {task_id}")
