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
        """The task's content, open; NotFound once its sealed content was written since it was
        stored (checked on every piece, with the one ``fstat`` the reuse check takes anyway)."""
        if self._file is not None and self._task_id == task_id:
            st = self._same_file(task_id, self._file)
            if st is not None:
                try:
                    self._store.check_unchanged(task_id, st)
                except BaseException:
                    self.close()
                    raise
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

    def _same_file(self, task_id: str, file: io.FileIO) -> os.stat_result | None:
        """``file``'s stat while it is still the task's content, else None (a task deleted and
        downloaded again has a new content file)."""
        try:
            st = os.fstat(file.fileno())
            return st if os.stat(self._store.content_path(task_id)).st_ino == st.st_ino else None
        except OSError:
            return None

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
