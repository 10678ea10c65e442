"""The unary host, task and peer RPCs of ``scheduler.v2.Scheduler``, as Dragonfly's scheduler answers them.

``StatPeer``, ``DeletePeer``, ``StatTask``, ``DeleteTask``, ``AnnounceHost``,
``ListHosts``, ``DeleteHost`` (docs/INTEROP.md §2.1, §2.4): the request checks
first (:mod:`.validate_rpc`), who may (:mod:`damselfly.security.authz`: a host's own
deletes, or an admin's; docs/SECURITY.md), then the answer or the error in Dragonfly's words
(G:scheduler/service/service_v2.go at 66db4564). Mixed into
:class:`~.service.SchedulerService`, which owns the state they read and whose
``_delete_peers`` / ``_delete_host`` drop what they delete (streams, waiting peers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import grpc
from google.protobuf import empty_pb2

from ..api import common_pb2, convert, scheduler_pb2
from ..domain import HostType
from ..errors import DamselflyError
from ..security.authz import HostAuthority, caller_of
from .dfcache.service import PersistentCacheService
from .metrics import SchedulerMetrics
from .resources import Host, Resources, Task
from .stream import status_of
from .validate_rpc import check_announce_host, check_ids

Context: TypeAlias = grpc.aio.ServicerContext


class ResourceRPCs:
    """Hosts, tasks and peers over unary RPCs; mixed into the scheduler's servicer."""

    res: Resources
    metrics: SchedulerMetrics
    clock: Callable[[], float]
    authority: HostAuthority
    persistent_cache: PersistentCacheService  # told of announced hosts (shared with other schedulers)

    def _delete_peers(self, peer_ids: list[str]) -> None:
        raise NotImplementedError  # the service's: it owns the streams and wakes waiting peers

    def _delete_host(self, host: Host) -> None:
        raise NotImplementedError  # the service's, as _delete_peers

    async def _abort(self, context: Context, error: DamselflyError) -> None:
        await context.abort(status_of(error), str(error))

    def _task_pb(self, task: Task) -> common_pb2.Task:
        return convert.scheduler_task_to_pb(
            task.info(),
            content_length=task.content_length,
            piece_count=task.piece_count,
            size_scope=task.size_scope,
            pieces=[task.source_pieces[n] for n in sorted(task.source_pieces)],
        )

    async def StatPeer(self, request: scheduler_pb2.StatPeerRequest, context: Context) -> common_pb2.Peer:
        try:
            check_ids(request, "StatPeerRequest", "host_id", "task_id", "peer_id")
            peer = self.res.peer(request.peer_id)
        except DamselflyError as e:
            await self._abort(context, e)
        return convert.scheduler_peer_to_pb(peer.info(), self._task_pb(peer.task))

    async def DeletePeer(self, request: scheduler_pb2.DeletePeerRequest, context: Context) -> empty_pb2.Empty:
        """Unknown IDs included, always OK, as Dragonfly's (G:scheduler/service/service_v2.go:446-452)."""
        try:
            check_ids(request, "DeletePeerRequest", "host_id", "task_id", "peer_id")
            # The peer's own host decides, whatever host the request names.
            peer = self.res.peers.get(request.peer_id)
            owner = peer.host.id if peer is not None else request.host_id
            self.authority.check_host(caller_of(context), owner, "delete peers")
        except DamselflyError as e:
            await self._abort(context, e)
        self._delete_peers([request.peer_id])
        return empty_pb2.Empty()

    async def StatTask(self, request: scheduler_pb2.StatTaskRequest, context: Context) -> common_pb2.Task:
        try:
            check_ids(request, "StatTaskRequest", "task_id")  # host_id: see validate_rpc.py
            task = self.res.task(request.task_id)
        except DamselflyError as e:
            await self._abort(context, e)
        return self._task_pb(task)

    async def DeleteTask(self, request: scheduler_pb2.DeleteTaskRequest, context: Context) -> empty_pb2.Empty:
        """This host's peers of the task; an unknown host is NOT_FOUND, an unknown task OK
        (G:scheduler/service/service_v2.go:519-545)."""
        try:
            check_ids(request, "DeleteTaskRequest", "host_id", "task_id")
            self.authority.check_host(caller_of(context), request.host_id, "delete tasks")
            host = self.res.host(request.host_id)
        except DamselflyError as e:
            await self._abort(context, e)
        self._delete_peers([p.id for p in host.peers.values() if p.task.id == request.task_id])
        return empty_pb2.Empty()

    async def AnnounceHost(
        self, request: scheduler_pb2.AnnounceHostRequest, context: Context
    ) -> empty_pb2.Empty:
        """A host's announce is checked against its caller first (authz.HostAuthority: the
        certificate's IP SANs, or the source address; the host ID's first announcer; seeds)."""
        try:
            check_announce_host(request)
            info = convert.host_from_pb(request.host)
            self.authority.admit_host(
                caller_of(context), info.id, info.ip, seed=info.type is not HostType.NORMAL
            )
        except DamselflyError as e:
            await self._abort(context, e)
        self.res.upsert_host(info, self.clock())
        self.persistent_cache.host_announced(info)
        h = request.host
        self.metrics.announce_host.labels(
            h.os, h.platform, h.platform_family, h.platform_version, h.kernel_version,
            h.build.git_version, h.build.git_commit, h.build.go_version, h.build.platform,
        ).inc()  # fmt: skip
        return empty_pb2.Empty()

    async def ListHosts(
        self, request: scheduler_pb2.ListHostsRequest, context: Context
    ) -> scheduler_pb2.ListHostsResponse:
        hosts = self.res.hosts.values()
        if request.HasField("type"):
            hosts = [h for h in hosts if int(h.info.type) == request.type]  # type: ignore[assignment]
        return scheduler_pb2.ListHostsResponse(hosts=[convert.host_to_pb(h.info) for h in hosts])

    async def DeleteHost(self, request: scheduler_pb2.DeleteHostRequest, context: Context) -> empty_pb2.Empty:
        """The host and all its peers; an unknown host is NOT_FOUND
        (G:scheduler/service/service_v2.go:1210-1221)."""
        try:
            check_ids(request, "DeleteHostRequest", "host_id")
            caller = caller_of(context)
            self.authority.check_host(caller, request.host_id, "delete the host")
            if not self.authority.owns(caller, request.host_id):
                self.authority.release(request.host_id)  # an admin's delete frees the ID, even of a host gone
            host = self.res.host(request.host_id)
        except DamselflyError as e:
            await self._abort(context, e)
        self._delete_host(host)
        return empty_pb2.Empty()
