"""The scheduler as a client of daemons' ``DfdaemonUpload.DownloadTask``: the seed-peer trigger.

The policy (whether and which seed host) lives in :mod:`.scheduling`; this
module does the I/O. :class:`SeedTrigger` owns one background task per
triggered task and seed host (a task whose seed was lost is triggered on
another): it has the seed host download it (:func:`download_on`: call
``DownloadTask`` and drain the progress stream), then reports the outcome
through ``on_done`` (in the event loop), saying whether the seed host was lost
(the call broke: :data:`HOST_LOST`) or failed the download. ``close()`` cancels whatever is still
running. Preheat (:mod:`.preheat_rpc`) has hosts download through
:func:`download_on` too.

The request carries the registering peer's ``Download`` (request headers
included: the seed is trusted infrastructure and may need the credentials for
the origin), minus what only concerns that peer's copy (output path, range,
back-to-source flags, restore numbers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from .. import tracing
from ..api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from ..domain import HostInfo
from ..errors import SchedulerError
from ..security.tls import TLSFiles, peer_channel

log = logging.getLogger(__name__)

# (task ID, seed host ID, the error or None, whether the host was lost rather than failing the task)
OnDone = Callable[[str, str, "SchedulerError | None", bool], None]

# A DownloadTask call that ends so lost its seed host (killed, unreachable), not the download.
HOST_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

# Fields of common.v2.Download about one peer's copy, not the content: the seed
# gets everything else (URL, tag, application, filtered params, headers, piece
# length, ...) so it computes the same task ID.
_PEER_FIELDS = (
    "output_path",
    "range",
    "timeout",
    "disable_back_to_source",
    "need_back_to_source",
    "prefetch",
    "is_prefetch",
    "need_piece_content",
    "force_hard_link",
    "remote_ip",
    "overwrite",
    "actual_piece_length",
    "actual_content_length",
    "actual_piece_count",
    "metadata_only",
)


def seed_download(download: common_pb2.Download) -> common_pb2.Download:
    """The ``Download`` to send a seed host for a peer's ``download``."""
    out = common_pb2.Download()
    out.CopyFrom(download)
    fields = out.DESCRIPTOR.fields_by_name
    for name in _PEER_FIELDS:
        if name in fields:
            out.ClearField(name)
    return out


def target(host: HostInfo) -> str:
    ip = f"[{host.ip}]" if ":" in host.ip else host.ip
    return f"{ip}:{host.port}"


def daemon_channel(host: HostInfo, tls: TLSFiles | None) -> grpc.aio.Channel:
    """A channel to ``host``'s upload gRPC, dialed by IP (under mTLS its certificate needs that IP
    SAN, or with ``tls.peerName`` that DNS SAN)."""
    return peer_channel(target(host), tls)


async def download_on(host: HostInfo, download: common_pb2.Download, *, tls: TLSFiles | None = None) -> None:
    """Have ``host``'s daemon download ``download`` (as a seed would) and wait till it is done.

    Raises :class:`grpc.aio.AioRpcError` when the daemon fails it.
    """
    request = dfdaemon_pb2.DownloadTaskRequest(download=seed_download(download))
    async with daemon_channel(host, tls) as channel:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)
        async for _ in stub.DownloadTask(request, metadata=tracing.with_metadata(None)):
            pass


class SeedTrigger:
    """Runs seed downloads in the background; one task per triggered task ID."""

    def __init__(self, on_done: OnDone, *, tls: TLSFiles | None = None) -> None:
        self._on_done = on_done
        self._tls = tls
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}

    @property
    def running(self) -> int:
        return len(self._running)

    def running_for(self, task_id: str) -> int:
        """Seed downloads of ``task_id`` still under way."""
        return sum(1 for t, _ in self._running if t == task_id)

    def trigger(self, task_id: str, host: HostInfo, download: common_pb2.Download) -> None:
        key = (task_id, host.id)
        if key in self._running:
            return
        t = asyncio.get_running_loop().create_task(
            self._run(task_id, host, download), name=f"seed-trigger-{task_id[:12]}"
        )
        self._running[key] = t

    async def _run(self, task_id: str, host: HostInfo, download: common_pb2.Download) -> None:
        error: SchedulerError | None = None
        lost = False
        try:
            await download_on(host, download, tls=self._tls)
            log.info("seed host %s downloaded task %s", host.id, task_id[:12])
        except grpc.aio.AioRpcError as e:
            lost = e.code() in HOST_LOST
            error = SchedulerError(
                f"seed host {host.id} ({target(host)}) failed task {task_id[:12]}: "
                f"{e.code().name} {e.details()}"
            )
            log.warning("%s", error)
        finally:
            self._running.pop((task_id, host.id), None)
        self._on_done(task_id, host.id, error, lost)

    async def close(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
