"""Preheat over gRPC: ``PreheatFile``, ``PreheatImage``, ``StatFile``, ``StatImage`` of ``scheduler.v2``.

How a preheat runs:

1. The request becomes a :class:`~.preheat.PreheatPlan`: for a file, one item
   per request; for an image, the manifest is resolved (:mod:`damselfly.registry_client`:
   auth, platform) and every blob a pull fetches (config and layers) is one
   item, addressed as ``REGISTRY/v2/REPO/blobs/DIGEST``, the URL the mirror
   asks the swarm for. The hosts come from the scope (:func:`~.preheat.select_hosts`).
   A missing tag, a refused login or no host in scope fails the RPC at once.
2. Each item is downloaded on each target host by calling that host's
   ``DfdaemonUpload.DownloadTask`` (the same call as the seed trigger) and
   draining its progress stream; seeds first, then the other hosts; at most
   ``concurrent_task_count`` items and ``concurrent_peer_count`` hosts per item
   at a time, all within ``timeout``.
3. The RPC answers when the job is over: ``Empty`` when every download
   succeeded, else ``ABORTED`` (``DEADLINE_EXCEEDED`` when only time ran out)
   with one line per failed download. A client that goes away does not stop
   the job (it is shielded); :meth:`PreheatRunner.close` does.

Progress: while the RPC runs, ``StatImage`` / ``StatFile`` say which hosts hold
(``is_finished``) or are downloading which item, from the scheduler's own
peers; ``damselfly preheat`` polls them.

Who: only an admin may preheat (docs/SECURITY.md), and only hosts that passed the
announce checks (:class:`damselfly.security.authz.HostAuthority`) are targets.

Credentials: ``username``/``password`` open the registry for the scheduler;
the ``Authorization`` that worked (a bearer token or basic auth) is put in
the request header of each blob download, for the daemon to present to the
registry. Daemons never pass credentials on (their scheduler client strips
them), and nothing here logs them.

Owner of the jobs and of the registry client: :class:`PreheatRunner`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from google.protobuf import empty_pb2

from .. import registry_client
from ..api import convert, scheduler_pb2
from ..domain import DownloadSpec, HostInfo
from ..errors import (
    DamselflyError,
    InvalidArgument,
    NotFound,
    SchedulerError,
    SourceStatusError,
    SourceUnreachable,
)
from ..security.authz import HostAuthority, caller_of
from ..security.tls import TLSFiles
from ..units import MINUTES
from .preheat import (
    HostLoad,
    Outcome,
    PreheatItem,
    PreheatPlan,
    PreheatReport,
    Scope,
    clamp,
    select_hosts,
    task_id_of,
)
from .resources import PeerState, Resources
from .seed_client import download_on

log = logging.getLogger(__name__)

# grpc ships no type information: to mypy this is Any, to the reader the servicer's context.
Context: TypeAlias = grpc.aio.ServicerContext
PreheatRequest = scheduler_pb2.PreheatFileRequest | scheduler_pb2.PreheatImageRequest
ImageRequest = scheduler_pb2.PreheatImageRequest | scheduler_pb2.StatImageRequest
AnyRequest = PreheatRequest | scheduler_pb2.StatFileRequest | scheduler_pb2.StatImageRequest
Downloader = Callable[[HostInfo, DownloadSpec], Awaitable[None]]

DEFAULT_TIMEOUT = 30 * MINUTES
DEFAULT_CONCURRENT_TASKS = 8
DEFAULT_CONCURRENT_PEERS = 50
# StatImage during a preheat should not resolve the manifest again each poll.
RESOLVED_TTL = 10 * MINUTES
RESOLVED_MAX = 256


async def grpc_download(host: HostInfo, spec: DownloadSpec, *, tls: TLSFiles | None = None) -> None:
    """Have ``host``'s daemon download ``spec`` (DfdaemonUpload.DownloadTask) and wait till it is done."""
    try:
        await download_on(host, convert.download_to_pb(spec), tls=tls)
    except grpc.aio.AioRpcError as e:
        raise SchedulerError(f"{e.code().name} {e.details()}") from e


@dataclass(frozen=True, slots=True)
class _Options:
    """The download options common to every item of a request."""

    tag: str
    application: str
    piece_length: int | None
    filtered_query_params: list[str] | None
    header: dict[str, str]
    priority: int


def _options(request: AnyRequest) -> _Options:
    piece_length = request.piece_length if request.HasField("piece_length") and request.piece_length else None
    return _Options(
        tag=request.tag,
        application=request.application,
        piece_length=piece_length,
        filtered_query_params=list(request.filtered_query_params) or None,
        header=dict(request.header),
        priority=int(getattr(request, "priority", 0)),
    )


def _file_spec(url: str, o: _Options) -> DownloadSpec:
    return DownloadSpec(
        url=url,
        tag=o.tag,
        application=o.application,
        priority=o.priority,
        filtered_query_params=o.filtered_query_params,
        request_header=dict(o.header),
        piece_length=o.piece_length,
    )


def blob_specs(resolved: registry_client.ResolvedImage, o: _Options, *, by_digest: bool) -> list[PreheatItem]:
    """One download per blob, as the mirror will later ask for it (same URL, same task ID)."""
    items = []
    for blob in resolved.blobs:
        header = dict(o.header)
        if resolved.authorization:
            header = {k: v for k, v in header.items() if k.lower() != "authorization"}
            header["Authorization"] = resolved.authorization
        spec = DownloadSpec(
            url=blob.url,
            digest=blob.digest,
            tag=o.tag,
            application=o.application,
            priority=o.priority,
            filtered_query_params=o.filtered_query_params,
            request_header=header,
            piece_length=o.piece_length,
            enable_task_id_based_blob_digest=by_digest,
        )
        items.append(PreheatItem(spec, blob.digest))
    return items


def _status(error: DamselflyError) -> grpc.StatusCode:
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, SourceStatusError):
        if error.status == 401:
            return grpc.StatusCode.UNAUTHENTICATED
        if error.status == 403:
            return grpc.StatusCode.PERMISSION_DENIED
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(error, SourceUnreachable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


class PreheatRunner:
    """Carries out preheat RPCs against the hosts in ``res``; owns its jobs and registry client."""

    def __init__(
        self,
        res: Resources,
        *,
        downloader: Downloader = grpc_download,
        registry: registry_client.RegistryClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        vetted: Callable[[str], bool] = lambda host_id: True,
    ) -> None:
        self.res = res
        self.vetted = vetted  # hosts that passed the announce checks: only they get a preheat
        self.downloader = downloader
        self.registry = registry or registry_client.RegistryClient()
        self.clock = clock
        self._jobs: set[asyncio.Task[PreheatReport]] = set()
        self._resolved: OrderedDict[str, tuple[float, registry_client.ResolvedImage]] = OrderedDict()

    async def close(self) -> None:
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._jobs.clear()
        await self.registry.close()

    # -- RPCs ------------------------------------------------------------------

    async def preheat_file(
        self, request: scheduler_pb2.PreheatFileRequest, context: Context
    ) -> empty_pb2.Empty:
        try:
            if not request.url:
                raise InvalidArgument("PreheatFileRequest needs a url")
            o = _options(request)
            items = (PreheatItem(_file_spec(request.url, o), request.url),)
            plan = self._plan(request, request.url, items)
        except DamselflyError as e:
            await context.abort(_status(e), str(e))
        return await self._carry_out(plan, context)

    async def preheat_image(
        self, request: scheduler_pb2.PreheatImageRequest, context: Context
    ) -> empty_pb2.Empty:
        try:
            resolved = await self._resolve(request, fresh=True)
            o = _options(request)
            items = tuple(blob_specs(resolved, o, by_digest=request.enable_task_id_based_blob_digest))
            what = str(resolved.ref) + (f" ({resolved.platform})" if resolved.platform else "")
            plan = self._plan(request, what, items)
        except DamselflyError as e:
            log.info("preheat image %s refused: %s", request.url, e)
            await context.abort(_status(e), str(e))
        return await self._carry_out(plan, context)

    async def stat_file(
        self, request: scheduler_pb2.StatFileRequest, context: Context
    ) -> scheduler_pb2.StatFileResponse:
        spec = _file_spec(request.url, _options(request))
        per_host = self._holders([PreheatItem(spec, request.url)])
        peers = [
            scheduler_pb2.PeerFile(
                ip=host.ip,
                hostname=host.hostname,
                cached_files=[scheduler_pb2.File(url=url, is_finished=done) for url, done in entries],
            )
            for host, entries in per_host
        ]
        return scheduler_pb2.StatFileResponse(peers=peers)

    async def stat_image(
        self, request: scheduler_pb2.StatImageRequest, context: Context
    ) -> scheduler_pb2.StatImageResponse:
        try:
            resolved = await self._resolve(request, fresh=False)
        except DamselflyError as e:
            await context.abort(_status(e), str(e))
        items = blob_specs(resolved, _options(request), by_digest=request.enable_task_id_based_blob_digest)
        per_host = self._holders(items)
        url_of = {i.name: i.spec.url for i in items}
        finished = {url for _, entries in per_host for url, done in entries if done}
        image = scheduler_pb2.Image(
            layers=[
                scheduler_pb2.Layer(url=url_of[i.name], is_finished=url_of[i.name] in finished) for i in items
            ]
        )
        peers = [
            scheduler_pb2.PeerImage(
                ip=host.ip,
                hostname=host.hostname,
                cached_layers=[scheduler_pb2.Layer(url=url, is_finished=done) for url, done in entries],
            )
            for host, entries in per_host
        ]
        return scheduler_pb2.StatImageResponse(image=image, peers=peers)

    # -- planning --------------------------------------------------------------

    def _plan(self, request: PreheatRequest, what: str, items: tuple[PreheatItem, ...]) -> PreheatPlan:
        hosts = [
            HostLoad(h.info, h.children / h.upload_limit if h.upload_limit else 1.0)
            for h in self.res.hosts.values()
            if self.vetted(h.id)  # its downloads carry the request's headers (credentials)
        ]
        targets = select_hosts(
            hosts,
            Scope.parse(request.scope),
            ips=list(request.ips),
            count=request.count if request.HasField("count") else None,
            percentage=request.percentage if request.HasField("percentage") else None,
        )
        timeout = convert.seconds(request.timeout) if request.HasField("timeout") else 0.0
        return PreheatPlan(
            what=what,
            items=items,
            targets=targets,
            concurrent_tasks=clamp(
                request.concurrent_task_count if request.HasField("concurrent_task_count") else None,
                DEFAULT_CONCURRENT_TASKS,
            ),
            concurrent_peers=clamp(
                request.concurrent_peer_count if request.HasField("concurrent_peer_count") else None,
                DEFAULT_CONCURRENT_PEERS,
            ),
            timeout_s=timeout if timeout > 0 else DEFAULT_TIMEOUT,
        )

    async def _resolve(self, request: ImageRequest, *, fresh: bool) -> registry_client.ResolvedImage:
        """The image's blobs: from the registry (``fresh``), or a recent resolve with the same credentials."""
        if not request.url:
            raise InvalidArgument("PreheatImageRequest needs a url (https://REGISTRY/v2/REPO/manifests/TAG)")
        ref = registry_client.parse_manifest_url(request.url)
        platform = request.platform or registry_client.DEFAULT_PLATFORM
        key = self._resolve_key(request, platform)
        now = self.clock()
        cached = self._resolved.get(key)
        if not fresh and cached is not None and now - cached[0] < RESOLVED_TTL:
            return cached[1]
        tls = registry_client.ssl_context(
            list(request.certificate_chain), insecure_skip_verify=request.insecure_skip_verify
        )
        resolved = await self.registry.resolve(
            ref,
            platform=platform,
            username=request.username,
            password=request.password,
            headers=dict(request.header),
            tls=tls if (request.certificate_chain or request.insecure_skip_verify) else None,
        )
        self._resolved[key] = (now, resolved)
        self._resolved.move_to_end(key)
        while len(self._resolved) > RESOLVED_MAX:
            self._resolved.popitem(last=False)
        return resolved

    @staticmethod
    def _resolve_key(request: ImageRequest, platform: str) -> str:
        # Credentials are part of the key (hashed): a caller without them resolves
        # against the registry and is refused there, not served from this cache.
        h = hashlib.sha256()
        for part in (request.url, platform, request.username, request.password):
            h.update(part.encode())
            h.update(b"\0")
        for k, v in sorted(request.header.items()):
            h.update(f"{k}\0{v}\0".encode())
        return h.hexdigest()

    def _holders(self, items: Iterable[PreheatItem]) -> list[tuple[HostInfo, list[tuple[str, bool]]]]:
        """Per host: (item URL, finished) for every item a live peer of that host has or is getting."""
        per_host: dict[str, tuple[HostInfo, list[tuple[str, bool]]]] = {}
        for item in items:
            task = self.res.tasks.get(task_id_of(item.spec))
            if task is None:
                continue
            states: dict[str, bool] = {}
            for peer in task.peers.values():
                if peer.state is PeerState.FAILED:
                    continue
                hid = peer.host.id
                states[hid] = states.get(hid, False) or peer.state is PeerState.SUCCEEDED
            for hid, done in states.items():
                host = self.res.hosts.get(hid)
                if host is not None:
                    per_host.setdefault(hid, (host.info, []))[1].append((item.spec.url, done))
        return sorted(per_host.values(), key=lambda e: e[0].id)

    # -- carrying out ----------------------------------------------------------

    async def _carry_out(self, plan: PreheatPlan, context: Context) -> empty_pb2.Empty:
        log.info(
            "preheat %s: %d tasks on %d hosts (%s)",
            plan.what,
            len(plan.items),
            len(plan.targets.all),
            ", ".join(h.id for h in plan.targets.all),
        )
        job = asyncio.get_running_loop().create_task(self.run(plan), name=f"preheat-{plan.what[:40]}")
        self._jobs.add(job)
        job.add_done_callback(self._job_done)
        report = await asyncio.shield(job)
        expected = len(plan.items) * len(plan.targets.all)
        summary = report.summary(expected)
        failed = report.failures
        if not failed:
            log.info("%s", summary)
            return empty_pb2.Empty()
        log.warning("%s", summary)
        timed_out = all(o.error.startswith("timed out") for o in failed)
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED if timed_out else grpc.StatusCode.ABORTED, summary
        )

    def _job_done(self, job: asyncio.Task[PreheatReport]) -> None:
        # The RPC that started the job may be gone (client left): say here what became of it.
        self._jobs.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.error("preheat job %s failed", job.get_name(), exc_info=job.exception())

    async def run(self, plan: PreheatPlan) -> PreheatReport:
        """Download every item on every target host; every (item, host) gets an outcome."""
        report = PreheatReport(plan.what)
        deadline = asyncio.get_running_loop().time() + plan.timeout_s
        tasks = asyncio.Semaphore(plan.concurrent_tasks)

        async def one_item(item: PreheatItem) -> None:
            async with tasks:
                for hosts in (plan.targets.seeds, plan.targets.others):
                    peers = asyncio.Semaphore(plan.concurrent_peers)
                    await asyncio.gather(*(self._one(item, h, peers, deadline, report) for h in hosts))

        await asyncio.gather(*(one_item(i) for i in plan.items))
        report.done = True
        return report

    async def _one(
        self,
        item: PreheatItem,
        host: HostInfo,
        limit: asyncio.Semaphore,
        deadline: float,
        report: PreheatReport,
    ) -> None:
        error = ""
        try:
            async with limit, asyncio.timeout_at(deadline):
                await self.downloader(host, item.spec)
        except TimeoutError:
            error = "timed out (the preheat's timeout)"
        except DamselflyError as e:
            error = str(e)
        except (OSError, grpc.RpcError) as e:
            error = f"{type(e).__name__}: {e}"
        if error:
            log.warning("preheat of %s on host %s failed: %s", item.name, host.id, error)
        else:
            log.debug("preheat of %s on host %s done", item.name, host.id)
        report.outcomes.append(Outcome(item.name, item.task_id, host.id, error))


class PreheatRPCs:
    """The ``scheduler.v2.Scheduler`` preheat methods; mixed into the scheduler's servicer.

    The runner is made on first use (over the servicer's ``res``), so the
    servicer only has to call :meth:`close_preheat` on shutdown.
    """

    res: Resources
    authority: HostAuthority
    tls: TLSFiles | None = None  # the scheduler's mTLS files, for its calls to daemons
    _preheat_runner: PreheatRunner | None = None

    @property
    def preheat(self) -> PreheatRunner:
        if self._preheat_runner is None:
            downloader = functools.partial(grpc_download, tls=self.tls)
            self._preheat_runner = PreheatRunner(
                self.res, downloader=downloader, vetted=self.authority.vetted
            )
        return self._preheat_runner

    async def _admin_only(self, context: Context) -> None:
        """A preheat makes hosts download (with the caller's credentials): an admin's call only."""
        try:
            self.authority.check_admin(caller_of(context), "preheat")
        except DamselflyError as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))

    async def close_preheat(self) -> None:
        runner, self._preheat_runner = self._preheat_runner, None
        if runner is not None:
            await runner.close()

    async def PreheatFile(
        self, request: scheduler_pb2.PreheatFileRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._admin_only(context)
        return await self.preheat.preheat_file(request, context)

    async def PreheatImage(
        self, request: scheduler_pb2.PreheatImageRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._admin_only(context)
        return await self.preheat.preheat_image(request, context)

    async def StatFile(
        self, request: scheduler_pb2.StatFileRequest, context: Context
    ) -> scheduler_pb2.StatFileResponse:
        return await self.preheat.stat_file(request, context)

    async def StatImage(
        self, request: scheduler_pb2.StatImageRequest, context: Context
    ) -> scheduler_pb2.StatImageResponse:
        return await self.preheat.stat_image(request, context)
