"""The content file a piece connection reads from, kept open between its requests."""

from __future__ import annotations

import asyncio
import io
import os

from ..store.piece_store import PieceStore


class OpenFiles:
    """The content file of the last task served on a connection (children ask for many
    pieces of one task in a row, so one open file per connection is enough)."""

    def __init__(self, store: PieceStore) -> None:
        self._store = store
        self._task_id = ""
        self._file: io.FileIO | None = None

    def get(self, task_id: str) -> io.FileIO:
        if self._file is not None and self._task_id == task_id and self._same_file(task_id, self._file):
            return self._file
        self.close()
        fd = self._store.open_read_fd(task_id)
        try:
            self._file = io.FileIO(fd, "rb", closefd=True)
        except BaseException:
            os.close(fd)
            raise
        self._task_id = task_id
        return self._file

    def _same_file(self, task_id: str, file: io.FileIO) -> bool:
        # A task deleted and downloaded again has a new content file.
        try:
            return os.stat(self._store.content_path(task_id)).st_ino == os.fstat(file.fileno()).st_ino
        except OSError:
            return False

    def close(self) -> None:
        """Close the file in a worker thread: if its task was deleted meanwhile, this is the
        last reference, and the file system frees (and may discard) every block of it in
        close(): a 1 GiB file stalled the event loop 0.3-0.5 s on an ext4 mounted ``discard``."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            asyncio.get_running_loop().run_in_executor(None, file.close)
        except RuntimeError:  # no running loop, or its executor is shut down
            file.close()
