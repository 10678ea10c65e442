"""dfget: download one URL through the local daemon's unix socket.

The flow: check every argument locally (digest, URL, output folder, an
existing output without ``--overwrite``) so a typo fails before any network;
open ``dfdaemon.v2.DfdaemonDownload.DownloadTask`` on the daemon's socket with
an absolute ``output_path``; show progress from the response stream; the
*daemon* writes the output (link or copy, fsync, rename) once the content is
complete and verified. dfget's last duty is that a failed run leaves no file at
the output path that was not there before.

When the daemon cannot write the output, because it does not see dfget's files
(dfget in a pod, the daemon on the node), dfget asks for the content instead
(``need_piece_content``, Dragonfly's ``--transfer-from-dfdaemon``): each piece
message carries its bytes, dfget writes them at their offsets into a temp file
beside the output and renames it into place only when every piece announced
arrived and the call ended OK (the daemon checks ``--digest`` before that).
Dragonfly's dfget decides by the flag alone; Damselfly's also decides by itself
(:func:`daemon_shares_files`): the daemon in another PID namespace or seeing another output directory
than dfget gets the content streamed.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from .. import tracing
from ..domain import DownloadSpec
from ..errors import DaemonUnavailable, InvalidArgument
from ..units import human_size
from .exitcodes import DAEMON_HINT, DfgetFailure, ExitCode, failure_from_error, failure_from_status
from .parsing import (
    check_output,
    check_url,
    default_endpoint,
    normalize_endpoint,
    parse_digest,
    parse_duration,
    parse_headers,
    parse_piece_length,
)
from .transfer_file import TransferFile

RATE_LIMIT_HEADER = "X-Damselfly-Rate-Limit"  # the daemon's service.RATE_LIMIT_HEADER

CONNECT_TIMEOUT_S = 5.0
# The daemon enforces --timeout itself; our own deadline is a backstop a little later.
DEADLINE_GRACE_S = 10.0


@dataclass
class GetOptions:
    """dfget's flags as given on the command line (strings, not yet checked)."""

    url: str
    output: str
    digest: str | None = None
    tag: str = ""
    application: str = ""
    headers: list[str] = field(default_factory=list)
    filtered_query_params: list[str] = field(default_factory=list)
    piece_length: str | None = None
    disable_back_to_source: bool = False
    timeout: str | None = None
    rate_limit: str | None = None  # bytes per second for this download, e.g. "10MB/s"
    progress: bool = True
    endpoint: str | None = None
    overwrite: bool = False  # replace an existing output (Dragonfly's --overwrite)
    transfer_from_dfdaemon: bool = False  # the content through the socket (Dragonfly's flag)


@dataclass
class GetPlan:
    """A checked request: what to send, where the output goes, which socket to use."""

    spec: DownloadSpec
    output: Path
    socket: Path
    timeout_s: float | None
    output_existed: bool
    overwrite: bool = False
    # True: the content comes through the socket; None: decided when connected (daemon_shares_files).
    transfer: bool | None = None


def plan(opts: GetOptions) -> GetPlan:
    """Check every argument, digest first; raise :class:`DfgetFailure` with the exit code on error."""
    try:
        digest = parse_digest(opts.digest)
        url = check_url(opts.url)
        headers = parse_headers(opts.headers)
        piece_length = parse_piece_length(opts.piece_length) if opts.piece_length else None
        timeout_s = parse_duration(opts.timeout) if opts.timeout else None
        if opts.rate_limit:
            # common.v2.Download has no rate field: the limit travels as a request header
            # that the daemon consumes (and never forwards to the origin or the scheduler).
            headers[RATE_LIMIT_HEADER] = str(parse_rate(opts.rate_limit))
        socket = normalize_endpoint(opts.endpoint or default_endpoint())
        output = check_output(opts.output)
        if not opts.overwrite and os.path.lexists(output):
            # As Dragonfly's dfget validate_args (src/bin/dfget/main.rs at ff17c0b): refused before
            # anything is downloaded.
            raise DfgetFailure(
                ExitCode.OUTPUT, f"output path {output} already exists; pass --overwrite to replace it"
            )
    except Exception as e:
        raise failure_from_error(e) from e
    spec = DownloadSpec(
        url=url,
        digest=digest,
        tag=opts.tag,
        application=opts.application,
        filtered_query_params=list(opts.filtered_query_params) or None,
        request_header=headers,
        piece_length=piece_length,
        output_path=str(output),
        timeout_s=timeout_s,
        disable_back_to_source=opts.disable_back_to_source,
    )
    return GetPlan(
        spec,
        output,
        socket,
        timeout_s,
        output_existed=os.path.lexists(output),
        overwrite=opts.overwrite,
        transfer=True if opts.transfer_from_dfdaemon else None,
    )


def daemon_shares_files(sock: socket.socket, directory: Path) -> bool:
    """Whether the daemon at the other end of ``sock`` sees ``directory`` as dfget does.

    The kernel names the peer's process (``SO_PEERCRED``): pid 0 means it runs in another
    PID namespace (a pod using the node's daemon through a host-path socket): it cannot
    write our output. Otherwise the directory is looked up through the daemon's own root
    and mounts (``/proc/PID/root``): another directory there (a container's root, a private
    ``/tmp``) means the same. Another mount namespace alone is no reason: ``ip netns exec``
    makes one with the same files. When it cannot be told (another user's daemon), the
    daemon is assumed to share it, as dfget always did."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return True
    pid = struct.unpack("3i", raw)[0]
    if pid <= 0:
        return False
    try:
        ours = os.stat(directory)
    except OSError:
        return True  # dfget checked the output's directory before; let the daemon say what is wrong
    try:
        theirs = os.stat(f"/proc/{pid}/root{directory.resolve()}")
    except PermissionError:
        return True
    except OSError:
        return False  # the daemon has no such directory
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def parse_rate(text: str) -> int:
    """``10MB/s``, ``50MiB``, ``1000000`` -> bytes per second (> 0)."""
    from ..units import parse_size

    try:
        rate = parse_size(text.strip().removesuffix("/s").removesuffix("ps"))
    except ValueError:
        raise InvalidArgument(f"--rate-limit: not a rate: {text!r} (try 10MB/s or 50MiB)") from None
    if rate <= 0:
        raise InvalidArgument(f"--rate-limit must be above 0, not {text!r}")
    return rate


class ProgressSink(Protocol):
    def started(self, total: int | None) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def started(self, total: int | None) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """A rich progress bar on stderr: bytes, rate, ETA."""

    def __init__(self, description: str, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._task = self._progress.add_task(description, total=None)
        self._progress.start()

    def started(self, total: int | None) -> None:
        self._progress.update(self._task, total=total or None)

    def advance(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def close(self) -> None:
        self._progress.stop()


@dataclass
class GetResult:
    size: int
    elapsed_s: float


DOWNLOAD_TASK = "/dfdaemon.v2.DfdaemonDownload/DownloadTask"


def execute_sync(p: GetPlan, sink: ProgressSink) -> GetResult:
    """Run the download on the daemon (blocking); raise :class:`DfgetFailure` on any failure.

    One ``DownloadTask`` call over the daemon's unix socket by :mod:`.h2call`, not grpcio:
    dfget's start-up is on every download's critical path (see that module)."""
    from . import h2call

    if not p.socket.exists():
        raise DfgetFailure(ExitCode.DAEMON_UNAVAILABLE, f"no daemon socket at {p.socket}; {DAEMON_HINT}")
    began = time.monotonic()
    state = _Call(p)
    deadline = p.timeout_s + DEADLINE_GRACE_S if p.timeout_s else None
    try:
        for raw in h2call.server_stream(
            str(p.socket),
            DOWNLOAD_TASK,
            state.request,
            timeout=deadline,
            connect_timeout=CONNECT_TIMEOUT_S,
            metadata=tracing.metadata(),
        ):
            state.take(raw, sink)
        if state.file is not None:
            gap = state.file.incomplete()
            if gap is not None:
                raise DfgetFailure(ExitCode.UNEXPECTED, f"the daemon ended the download early: {gap}")
            state.file.commit()
    except h2call.RpcError as e:
        state.discard()
        if e.local and e.code == "UNAVAILABLE" and not state.started:
            gone = DaemonUnavailable(f"no daemon answers on {p.socket} ({e.details}); {DAEMON_HINT}")
            raise failure_from_error(gone) from None
        raise failure_from_status(
            e.code,
            e.details,
            back_to_source_disabled=p.spec.disable_back_to_source,
            started=state.started,
            details_bin=e.details_bin,
        ) from None
    except BaseException:
        state.discard()
        raise
    elapsed = time.monotonic() - began
    try:
        size = p.output.stat().st_size
    except OSError:
        raise DfgetFailure(
            ExitCode.UNEXPECTED, f"the daemon reported success but wrote no file at {p.output}"
        ) from None
    if state.started and state.content_length and size != state.content_length:
        raise DfgetFailure(
            ExitCode.UNEXPECTED,
            f"the daemon wrote {size} bytes to {p.output} but announced {state.content_length}",
        )
    return GetResult(size, elapsed)


class _Call:
    """One DownloadTask call's state: the request (decided once connected) and what came back."""

    def __init__(self, p: GetPlan) -> None:
        self.plan = p
        self.started = False
        self.content_length = 0
        self.file: TransferFile | None = None

    def request(self, sock: socket.socket) -> bytes:
        """The request, once the socket says who answers: the content streamed, or written by the daemon."""
        from dragonfly_api import dfdaemon_pb2

        from ..api.convert import download_to_pb

        p = self.plan
        transfer = p.transfer if p.transfer is not None else not daemon_shares_files(sock, p.output.parent)
        download = download_to_pb(p.spec)
        download.overwrite = p.overwrite
        if transfer:
            # As Dragonfly's dfget with --transfer-from-dfdaemon (src/bin/dfget/main.rs at ff17c0b):
            # no output_path, need_piece_content set.
            download.ClearField("output_path")
            download.need_piece_content = True
            self.file = TransferFile(p.output, overwrite=p.overwrite)
        message: bytes = dfdaemon_pb2.DownloadTaskRequest(download=download).SerializeToString()
        return message

    def take(self, raw: bytes, sink: ProgressSink) -> None:
        from dragonfly_api import dfdaemon_pb2

        response = dfdaemon_pb2.DownloadTaskResponse.FromString(raw)
        which = response.WhichOneof("response")
        if which == "download_task_started_response":
            self.started = True
            r = response.download_task_started_response
            self.content_length = int(r.content_length)
            sink.started(self.content_length)
            if self.file is not None:
                # Rust's daemon lists the pieces to come (held ones included): each is awaited.
                self.file.started(self.content_length, [int(x.number) for x in r.pieces])
        elif which == "download_piece_finished_response":
            piece = response.download_piece_finished_response.piece
            if self.file is not None:
                if not piece.HasField("content"):
                    raise DfgetFailure(
                        ExitCode.UNEXPECTED,
                        f"the daemon sent piece {piece.number} without its content "
                        "(it does not support --transfer-from-dfdaemon)",
                    )
                self.file.piece(int(piece.number), int(piece.offset), piece.content)
            sink.advance(int(piece.length))

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()


def remove_new_output(p: GetPlan) -> None:
    """After a failure: remove a file at the output path that was not there before."""
    if not p.output_existed and os.path.lexists(p.output) and not p.output.is_dir():
        try:
            p.output.unlink()
        except OSError as e:
            print(f"dfget: warning: could not remove partial output {p.output}: {e}", file=sys.stderr)


def summary_line(result: GetResult, output: Path) -> str:
    rate = result.size / result.elapsed_s if result.elapsed_s > 0 else 0.0
    return f"dfget: {human_size(result.size)} to {output} in {result.elapsed_s:.2f} s ({human_size(rate)}/s)"


async def get_async(opts: GetOptions, *, stderr: TextIO | None = None) -> ExitCode:
    """dfget as a coroutine: prints its messages to ``stderr`` and returns the exit code."""
    err = stderr or sys.stderr
    try:
        p = plan(opts)
    except DfgetFailure as f:
        print(f"dfget: error: {f.message}", file=err)
        return f.code
    return await run_plan(p, progress=opts.progress, stderr=err)


def run_plan_sync(p: GetPlan, *, progress: bool, stderr: TextIO) -> ExitCode:
    show = progress and stderr.isatty()
    sink: ProgressSink = RichProgress(p.output.name, stderr) if show else NoProgress()
    try:
        with tracing.span("dfget", "dfget", attributes={"url": p.spec.url}):
            result = execute_sync(p, sink)
    except BaseException as e:
        sink.close()
        remove_new_output(p)
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        failure = failure_from_error(e)
        print(f"dfget: error: {failure.message}", file=stderr)
        return failure.code
    sink.close()
    print(summary_line(result, p.output), file=stderr)
    return ExitCode.OK


async def run_plan(p: GetPlan, *, progress: bool, stderr: TextIO) -> ExitCode:
    """:func:`run_plan_sync` for callers on an event loop (in a worker thread)."""
    import asyncio

    return await asyncio.to_thread(run_plan_sync, p, progress=progress, stderr=stderr)


def run_get(opts: GetOptions) -> int:
    """dfget as a program: runs the loop, turns Ctrl-C into exit 130 with no new output file."""
    try:
        p = plan(opts)
    except DfgetFailure as f:
        print(f"dfget: error: {f.message}", file=sys.stderr)
        return int(f.code)
    try:
        tracing.configure_from_env("dfget")
    except RuntimeError as e:
        print(f"dfget: error: {e}", file=sys.stderr)
        return int(ExitCode.USAGE)
    try:
        return int(run_plan_sync(p, progress=opts.progress, stderr=sys.stderr))
    except KeyboardInterrupt:
        remove_new_output(p)
        print("dfget: cancelled", file=sys.stderr)
        return int(ExitCode.CANCELLED)
    finally:
        tracing.shutdown()  # exports dfget's span
