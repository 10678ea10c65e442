"""Every scheduler a daemon is given, which of them are alive, and which one a task goes to.

A daemon is given schedulers by address (``scheduler.addrs``, ``--scheduler``
repeated) or by a DNS name that resolves to several; names are resolved again
every ``scheduler.resolveInterval``. Under mTLS, a scheduler reached at an
address a name resolved to must present a certificate for that name (not for
its IP, which in Kubernetes is a pod's and changes). Each address is a
:class:`~.scheduler_client.SchedulerLink`, checked with ``grpc.health.v1``
every ``scheduler.healthInterval``. A task goes to its scheduler on the
consistent-hash ring (:mod:`.scheduler_ring`), skipping those that are down:
so every daemon asks the same scheduler about the same task, a dead
scheduler's tasks move to the next live one, and one that comes back takes
its share of new tasks again (running downloads keep the stream they have).

A link is *ready* once this host was announced there since it came up or
last lost its state (a broken stream or a dropped connection, watched on the
channel: the scheduler may have restarted and forgotten everything, even between
two health checks). The keeper of each link (one task per link) announces
the host, then has the held tasks the ring now gives that link registered
again (``sync``, the daemon's :class:`~.announcer.Announcer`), at once when the
link comes up, loses state, or the ring changes, and then every
``announce_interval``. Downloads wait for their link to be ready, for at most
the time they are given (:meth:`SchedulerFleet.link_for`).

Owner of the links, their keeper tasks and the resolver task: :class:`SchedulerFleet`;
:meth:`SchedulerFleet.close` ends them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable

import grpc

from ..errors import ConfigError, SchedulerError
from .scheduler_client import SchedulerLink
from .scheduler_ring import HashRing
from .threads import cancel_and_wait, wait_event

log = logging.getLogger(__name__)

# What the daemon does with a link that became ready or whose share of the ring changed:
# ``sync(link, announce)`` announces the host when ``announce`` and registers the held tasks
# the ring now gives the link; raises SchedulerError when the scheduler cannot be reached.
Sync = Callable[[SchedulerLink, bool], Awaitable[None]]


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port), with a one-line error for anything else."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"scheduler address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SchedulerFleet:
    """The daemon's schedulers: links by address, their health, the ring over them."""

    def __init__(
        self,
        addrs: list[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        extensions: bool = True,
        health_interval: float = 1.0,
        resolve_interval: float = 30.0,
        announce_interval: float = 30.0,
    ) -> None:
        if not addrs:
            raise SchedulerError("no scheduler address configured")
        self._targets = [split_addr(a) for a in addrs]
        self._credentials = credentials
        self.extensions = extensions
        self.health_interval = health_interval
        self.resolve_interval = resolve_interval
        self.announce_interval = announce_interval
        self.links: dict[str, SchedulerLink] = {}
        # The configured name each resolved address came from (none for an address given as an IP).
        self._names: dict[str, str] = {}
        self.ring = HashRing()
        self.sync: Sync | None = None
        self._keepers: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}  # each link's connection watcher
        self._kicks: dict[str, asyncio.Event] = {}
        self._resolver: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()  # links that no longer resolve, closing
        # Set (and replaced) whenever a link goes up, down or ready: downloads waiting for one wake.
        self._changed = asyncio.Event()
        self._set_addrs([join_addr(h, p) for h, p in self._targets if _is_ip(h)])

    # ------------------------------------------------------------ membership

    def _set_addrs(self, addrs: list[str]) -> None:
        """Make the links exactly ``addrs`` (new ones start down and are checked at once)."""
        wanted = set(addrs)
        if not wanted:
            return  # nothing resolved: keep what we have rather than lose every scheduler
        for addr in wanted - self.links.keys():
            link = SchedulerLink(
                addr,
                credentials=self._credentials,
                extensions=self.extensions,
                target_name=self._names.get(addr, ""),
            )
            link.on_lost = self._lost
            self.links[addr] = link
            self._kicks[addr] = asyncio.Event()
            if self._resolver is not None:  # started: keep it
                self._keep(link)
        for addr in self.links.keys() - wanted:
            log.info("scheduler %s no longer resolves; leaving it", addr)
            link = self.links.pop(addr)
            for tasks in (self._keepers, self._watchers):
                task = tasks.pop(addr, None)
                if task is not None:
                    task.cancel()
            self._kicks.pop(addr, None)
            closing = asyncio.get_running_loop().create_task(link.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        if wanted != self.ring.nodes:
            self.ring.set_nodes(wanted)
            self._ring_changed()

    async def _resolve(self) -> list[str]:
        loop = asyncio.get_running_loop()
        out: list[str] = []
        for host, port in self._targets:
            if _is_ip(host):
                out.append(join_addr(host, port))
                self._names[join_addr(host, port)] = ""  # given as an IP: checked as the IP
                continue
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as e:
                log.warning("cannot resolve scheduler %s: %s", host, e)
                out.extend(a for a in self.links if a.endswith(f":{port}"))  # keep the last answer
                continue
            for info in infos:
                addr = join_addr(str(info[4][0]), port)
                out.append(addr)
                self._names.setdefault(addr, host)
        return sorted(set(out))

    async def _resolve_loop(self) -> None:
        while True:
            # Nothing resolved yet (a name not in DNS yet): ask again soon.
            await asyncio.sleep(self.resolve_interval if self.links else self.health_interval)
            self._set_addrs(await self._resolve())

    async def start(self) -> None:
        """Resolve the names, then keep every link (health, announce) and re-resolve now and then."""
        self._set_addrs(await self._resolve())
        if not self.links:
            log.warning("no scheduler address resolves yet; asking DNS again every %gs", self.health_interval)
        loop = asyncio.get_running_loop()
        self._resolver = loop.create_task(self._resolve_loop(), name="scheduler-resolve")
        for link in self.links.values():
            self._keep(link)

    def _keep(self, link: SchedulerLink) -> None:
        loop = asyncio.get_running_loop()
        self._keepers[link.addr] = loop.create_task(self._keeper(link), name=f"scheduler-{link.addr}")
        self._watchers[link.addr] = loop.create_task(self._watch(link), name=f"scheduler-conn-{link.addr}")

    async def _watch(self, link: SchedulerLink) -> None:
        """Resync ``link`` whenever its connection is lost: a scheduler killed and started again
        between two health checks has forgotten this host and its held tasks, and its new
        process is always a new connection (a lost connection to one that did not restart
        costs a spare announce)."""
        state = link.connection_state()
        while True:
            await link.connection_changed(state)
            new = link.connection_state()
            # Left READY, or seen anywhere but READY (a change may pass unseen between two
            # looks): a ready link resyncs (_lost ignores one that is not ready yet).
            if state is grpc.ChannelConnectivity.READY or new is not grpc.ChannelConnectivity.READY:
                self._lost(link, None)
            if new is grpc.ChannelConnectivity.READY and not link.ready:
                self.kick(link.addr)  # connected again: check and announce now, not at the next check
            state = new

    # --------------------------------------------------------------- health

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _ring_changed(self) -> None:
        """Which live link owns a task changed: each ready link registers what it gained."""
        for kick in self._kicks.values():
            kick.set()
        self._notify()

    def _lost(self, link: SchedulerLink, code: grpc.StatusCode | None) -> None:
        """A stream to ``link`` broke: it may be gone or have restarted; check it now, then
        announce again and register what it should know."""
        if not link.ready:
            return
        log.info("stream to scheduler %s broke (%s); announcing again", link.addr, code.name if code else "-")
        link.ready = False
        link.generation += 1
        self._kicks[link.addr].set()
        self._notify()

    def _set_up(self, link: SchedulerLink, up: bool) -> None:
        if up == link.up:
            return
        link.up = up
        link.ready = False
        link.generation += 1
        log.info("scheduler %s is %s", link.addr, "serving" if up else "down")
        self._ring_changed()

    async def _keeper(self, link: SchedulerLink) -> None:
        """Check ``link`` every health interval; announce and sync when it needs it."""
        kick = self._kicks[link.addr]
        next_announce = 0.0
        while True:
            kick.clear()
            self._set_up(link, await link.check(timeout=max(1.0, 2 * self.health_interval)))
            try:
                if link.up and (not link.ready or time.monotonic() >= next_announce):
                    try:
                        await self._sync(link, announce=True)
                        next_announce = time.monotonic() + self.announce_interval
                    except SchedulerError as e:
                        log.warning("%s", e)
                        self._set_up(link, False)
                elif link.up:
                    with contextlib.suppress(SchedulerError):
                        await self._sync(link, announce=False)  # the ring changed: take what it gained
            except Exception:  # a bug in one round must not stop this scheduler being kept
                log.exception("keeping scheduler %s failed; trying again", link.addr)
            # A cancel (close) that comes as the kick is set must still end the keeper.
            await wait_event(kick, self.health_interval)

    async def _sync(self, link: SchedulerLink, *, announce: bool) -> None:
        """Announce (the periodic one), or after a loss announce, mark ready and register the
        held tasks; or (``announce`` false) only register what the ring gave the link."""
        fresh = announce and not link.ready
        generation = link.generation
        if announce and self.sync is not None:
            await self.sync(link, True)  # the host first: nothing registers on a scheduler without it
        if fresh and link.generation == generation and link.up:
            link.ready = True
            self._notify()
        if (fresh or not announce) and self.sync is not None:
            await self.sync(link, False)

    def kick(self, addr: str) -> None:
        """Have ``addr``'s keeper sync now (a task to register there)."""
        kick = self._kicks.get(addr)
        if kick is not None:
            kick.set()

    # ------------------------------------------------------------ placement

    def owner(self, task_id: str) -> SchedulerLink | None:
        """The live scheduler of ``task_id`` on the ring; None when none is up."""
        addr = self.ring.lookup(task_id, lambda a: (link := self.links.get(a)) is not None and link.up)
        return self.links.get(addr) if addr is not None else None

    async def link_for(self, task_id: str, wait: float | None) -> SchedulerLink:
        """The scheduler of ``task_id``, once ready; waits at most ``wait`` seconds (None: forever)
        for one, else raises :class:`SchedulerError`."""
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            link = self.owner(task_id)
            if link is not None and link.ready:
                return link
            changed = self._changed
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                down = ", ".join(sorted(self.links)) or "none"
                raise SchedulerError(f"no scheduler ready within {wait:g}s (tried {down})")
            await wait_event(changed, left)

    def ready_links(self) -> list[SchedulerLink]:
        return [link for link in self.links.values() if link.ready]

    # ----------------------------------------------------- unary RPCs, to all

    async def delete_host(self, host_id: str) -> None:
        errors = []
        for link in self.ready_links():
            try:
                await link.delete_host(host_id)
            except SchedulerError as e:
                errors.append(str(e))
        if errors:
            raise SchedulerError("; ".join(errors))

    async def delete_task(self, host_id: str, task_id: str) -> None:
        # After a failover the task may be known to more than one scheduler.
        for link in self.ready_links():
            await link.delete_task(host_id, task_id)

    async def close(self) -> None:
        tasks = [
            *self._keepers.values(),
            *self._watchers.values(),
            *([self._resolver] if self._resolver else []),
            *self._closing,
        ]
        await cancel_and_wait(tasks)
        self._keepers.clear()
        self._watchers.clear()
        for link in self.links.values():
            await link.close()
