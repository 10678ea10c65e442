"""Bringing the tasks on disk into a :class:`~.piece_store.PieceStore`'s table, at once or in a thread.

A daemon restarted on a store of 100 000 tasks needs seconds to read them
(:mod:`.recovery`); loaded in a thread, it serves meanwhile. Until the walk is
done, a task the store does not know yet is looked for on disk
(:meth:`StoreLoader.load_one`), so a held task is never taken for a new one;
each task is read under the store's lock, so one created, changed or deleted
meanwhile is seen as it is, and none is loaded twice. Owner: the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

from .files import task_dir
from .metadata import TaskMeta
from .recovery import load_task, task_dirs

log = logging.getLogger(__name__)


class StoreLoader:
    """Fills ``tasks`` (the store's table, guarded by ``lock``) from ``root``."""

    def __init__(self, root: Path, lock: threading.RLock, tasks: dict[str, TaskMeta]) -> None:
        self.root = root
        self._lock = lock
        self._tasks = tasks
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, background: bool) -> None:
        """Load every task: now, or (``background``) in a thread."""
        if background:
            self._thread = threading.Thread(target=self._load_all, name="store-load", daemon=True)
            self._thread.start()
        else:
            self._load_all()

    def _load_all(self) -> None:
        began = time.monotonic()
        try:
            for path in task_dirs(self.root):
                if self._stop.is_set():
                    return
                task_id = os.path.basename(path)
                with self._lock:
                    if task_id not in self._tasks:
                        meta = load_task(path)
                        if meta is not None:
                            self._tasks[task_id] = meta
        except OSError as e:
            # What is loaded stands; the rest is found on disk when asked for, not listed.
            log.error("loading the store under %s stopped: %s", self.root, e)
        finally:
            if not self._stop.is_set():
                self._loaded.set()
        if self._thread is not None:
            log.info("store loaded: %d task(s) in %.1fs", len(self._tasks), time.monotonic() - began)

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def load_one(self, task_id: str) -> TaskMeta | None:
        """The task (a valid ID the table does not hold), read from disk now if the walk is
        not done; None if it is not there."""
        with self._lock:
            meta = self._tasks.get(task_id)
            if meta is None and not self._loaded.is_set():
                meta = load_task(task_dir(self.root, task_id))
                if meta is not None:
                    self._tasks[task_id] = meta
            return meta

    async def until_loaded(self) -> None:
        """Return once the walk is done (waits in a thread, half a second at a time)."""
        while not self._loaded.is_set():
            await asyncio.to_thread(self._loaded.wait, 0.5)

    def stop(self) -> None:
        """End a walk under way (the store is closing) and wait for its thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
