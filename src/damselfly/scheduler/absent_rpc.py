"""The scheduler RPCs Damselfly does not implement, answered as Dragonfly's scheduler answers them.

Dragonfly's Go scheduler has a body for every ``scheduler.v2`` method, even for
features it lacks, so a Rust dfdaemon or dfcache sees these answers rather than
``UNIMPLEMENTED`` (docs/INTEROP.md §2.1):

- the *cache* task RPCs are stubs there (G:scheduler/rpcserver/scheduler_server_v2.go:170-199):
  ``AnnounceCachePeer`` ends at once with OK and no message; ``Stat*`` answer an empty
  message; ``Delete*`` answer OK;
- the *persistent* task RPCs need redis, which a scheduler without it refuses with
  ``FAILED_PRECONDITION "redis is not enabled"`` (G:scheduler/service/service_v2.go:1971,
  2708, 2830, 2882, 2937, 3125, 3167, 3208). Damselfly keeps no persistent (non-cache)
  tasks, so it is that scheduler.

The request checks run first, as Dragonfly's validating interceptor does.
(Persistent *cache* tasks, dfcache, are Damselfly's own: scheduler/dfcache/.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NoReturn, TypeAlias

import grpc
from google.protobuf import empty_pb2

from ..api import common_pb2, scheduler_pb2
from ..errors import InvalidArgument
from .validate_rpc import check_ids

Context: TypeAlias = grpc.aio.ServicerContext

NO_REDIS = "redis is not enabled"
_PEER_IDS = ("host_id", "task_id", "peer_id")
_TASK_IDS = ("host_id", "task_id")


async def _checked(context: Context, request: object, *fields: str) -> None:
    try:
        check_ids(request, type(request).__name__, *fields)
    except InvalidArgument as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


class CacheTaskStubs:
    """``AnnounceCachePeer``, ``StatCachePeer``, ``DeleteCachePeer``, ``StatCacheTask``,
    ``DeleteCacheTask``: Dragonfly's stubs, answer for answer."""

    async def AnnounceCachePeer(
        self, request_iterator: AsyncIterator[scheduler_pb2.AnnounceCachePeerRequest], context: Context
    ) -> None:
        return None  # the call ends with OK before any message is read

    async def StatCachePeer(
        self, request: scheduler_pb2.StatCachePeerRequest, context: Context
    ) -> common_pb2.CachePeer:
        await _checked(context, request, *_PEER_IDS)
        return common_pb2.CachePeer()

    async def DeleteCachePeer(
        self, request: scheduler_pb2.DeleteCachePeerRequest, context: Context
    ) -> empty_pb2.Empty:
        await _checked(context, request, *_PEER_IDS)
        return empty_pb2.Empty()

    async def StatCacheTask(
        self, request: scheduler_pb2.StatCacheTaskRequest, context: Context
    ) -> common_pb2.CacheTask:
        await _checked(context, request, *_TASK_IDS)
        return common_pb2.CacheTask()

    async def DeleteCacheTask(
        self, request: scheduler_pb2.DeleteCacheTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        await _checked(context, request, *_TASK_IDS)
        return empty_pb2.Empty()


class PersistentTaskAbsent:
    """The eight persistent task RPCs, as a Dragonfly scheduler without redis answers them."""

    async def _no_redis(self, context: Context, request: object, *fields: str) -> NoReturn:
        await _checked(context, request, *fields)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_REDIS)
        raise AssertionError("unreachable: context.abort raises")

    async def AnnouncePersistentPeer(
        self, request_iterator: AsyncIterator[scheduler_pb2.AnnouncePersistentPeerRequest], context: Context
    ) -> None:
        # Refused before the first message is read, so no message is checked.
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_REDIS)

    async def StatPersistentPeer(
        self, request: scheduler_pb2.StatPersistentPeerRequest, context: Context
    ) -> common_pb2.PersistentPeer:
        await self._no_redis(context, request, *_PEER_IDS)

    async def DeletePersistentPeer(
        self, request: scheduler_pb2.DeletePersistentPeerRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._no_redis(context, request, *_PEER_IDS)

    async def UploadPersistentTaskStarted(
        self, request: scheduler_pb2.UploadPersistentTaskStartedRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._no_redis(context, request, *_PEER_IDS)

    async def UploadPersistentTaskFinished(
        self, request: scheduler_pb2.UploadPersistentTaskFinishedRequest, context: Context
    ) -> common_pb2.PersistentTask:
        await self._no_redis(context, request, *_PEER_IDS)

    async def UploadPersistentTaskFailed(
        self, request: scheduler_pb2.UploadPersistentTaskFailedRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._no_redis(context, request, *_PEER_IDS)

    async def StatPersistentTask(
        self, request: scheduler_pb2.StatPersistentTaskRequest, context: Context
    ) -> common_pb2.PersistentTask:
        await self._no_redis(context, request, *_TASK_IDS)

    async def DeletePersistentTask(
        self, request: scheduler_pb2.DeletePersistentTaskRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._no_redis(context, request, *_TASK_IDS)
