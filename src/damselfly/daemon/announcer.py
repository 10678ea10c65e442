"""Telling each scheduler who this host is and which tasks it holds.

The fleet (:mod:`.scheduler_fleet`) calls :meth:`Announcer.sync` for a link
that came up, lost its state (a broken stream: perhaps a restart), or gained
tasks on the ring (another scheduler went down): the host is announced, then
each complete task this host holds whose scheduler is now that link is
registered there as Dragonfly reports a task held complete (a metadata-only
register, Started, Finished: ``PeerStream.restore``), so a restarted or
failed-over scheduler knows this host's tasks, a seed's included, before it
sends anyone to the origin. A download whose report of its end was lost (its
stream broke as it finished) is registered the same way (:meth:`unreported`).

Owner of the per-link record of what was registered there (reset with each
link generation): :class:`Announcer`, on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .. import ids
from ..domain import DownloadSpec, HostInfo
from ..errors import SchedulerError
from .download.tasks import TaskManager
from .persistent_cache import PersistentCache
from .scheduler_client import SchedulerLink
from .scheduler_fleet import SchedulerFleet
from .store.piece_store import PieceStore

log = logging.getLogger(__name__)

RESTORE_STREAMS = 8  # held tasks registered at once with one scheduler (more swamps it)


class Announcer:
    """Announces the host and registers held tasks, link by link."""

    def __init__(
        self,
        fleet: SchedulerFleet,
        host: HostInfo,
        store: PieceStore,
        manager: TaskManager,
        *,
        hostname: str,
        is_seed: bool,
        schedule_timeout: float,
        persistent_cache: PersistentCache | None = None,
        cache_addr: str | None = None,
        on_first: Callable[[], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.host = host
        self.store = store
        self.manager = manager
        self.hostname = hostname
        self.is_seed = is_seed
        self.schedule_timeout = schedule_timeout
        self.persistent_cache = persistent_cache
        self.cache_addr = cache_addr
        self.on_first = on_first
        # addr -> (link generation, task IDs registered there in that generation)
        self._known: dict[str, tuple[int, set[str]]] = {}
        self._cache_generation = -1  # the cache link's generation its dfcache tasks were restored in
        self.restored_total = 0

    def _known_at(self, link: SchedulerLink) -> set[str]:
        gen, known = self._known.get(link.addr, (-1, set()))
        if gen != link.generation:
            known = set()
            self._known[link.addr] = (link.generation, known)
        return known

    def reported(self, task_id: str, addr: str) -> None:
        """A download told scheduler ``addr`` its end: that scheduler knows this host holds it."""
        link = self.fleet.links.get(addr)
        if link is not None:
            self._known_at(link).add(task_id)

    def unreported(self, task_id: str) -> None:
        """A download finished but its scheduler may not have heard: register it again."""
        for _, known in self._known.values():
            known.discard(task_id)
        link = self.fleet.owner(task_id)
        if link is not None:
            self.fleet.kick(link.addr)

    async def sync(self, link: SchedulerLink, announce: bool) -> None:
        if announce:
            self.host.tx_bandwidth = 0
            await link.announce_host(self.host, self.fleet.announce_interval)
            fresh = link.generation != self._cache_generation
            if self.persistent_cache is not None and link.addr == self.cache_addr and fresh:
                await self.persistent_cache.restore()
                self._cache_generation = link.generation
            return
        count = await self._restore(link)
        if count:
            log.info("registered %d stored task(s) with scheduler %s", count, link.addr)
        if self.on_first is not None:
            self.on_first()
            self.on_first = None

    async def _restore(self, link: SchedulerLink) -> int:
        """Register at ``link`` the complete tasks held here that the ring gives it, the most
        recently used first, over :data:`RESTORE_STREAMS` streams at once (one at a time, each
        waiting for the scheduler's end of its stream, 100 k held tasks took minutes:
        benchmarks/daemon_restart.py). Waits for the store's background load first."""
        await self.store.loading.until_loaded()
        generation = link.generation
        known = self._known_at(link)
        answer_timeout = None if await link.speaks_extensions() else self.schedule_timeout
        held = [
            meta
            for meta in self.store.tasks()
            if meta.state == "succeeded"
            and meta.is_complete
            and not meta.persistent_cache  # announced through the persistent-cache RPCs
            and meta.task_id not in known
            and not self.manager.is_running(meta.task_id)
            and self.fleet.owner(meta.task_id) is link
        ]
        held.sort(key=lambda m: m.accessed_at, reverse=True)  # the likeliest asked for first
        queue = iter(held)
        count = 0

        async def register_some() -> None:
            nonlocal count
            for meta in queue:  # shared by the workers: each task goes once
                if link.generation != generation or not link.up:
                    raise SchedulerError(f"scheduler {link.addr} changed while registering held tasks")
                assert meta.content_length is not None and meta.piece_length is not None
                peer_id = ids.peer_id(self.host.ip, self.hostname, seed=self.is_seed)
                stream = link.peer_stream(self.host.id, meta.task_id, peer_id)
                spec = DownloadSpec(url=meta.url, tag=meta.tag, application=meta.application)
                try:
                    await stream.restore(
                        spec, meta.content_length, meta.piece_length, meta.piece_count or 0,
                        answer_timeout=answer_timeout,
                    )  # fmt: skip
                    known.add(meta.task_id)
                    count += 1
                except SchedulerError as e:
                    log.warning("could not register task %s with %s: %s", meta.task_id[:12], link.addr, e)
                finally:
                    await stream.close()

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(RESTORE_STREAMS, len(held))):
                    group.create_task(register_some())
        except* SchedulerError as group_error:
            raise group_error.exceptions[0] from None
        finally:
            self.restored_total += count
        return count
