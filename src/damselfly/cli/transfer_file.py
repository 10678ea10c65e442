"""dfget's output when the daemon streams the content (``--transfer-from-dfdaemon``).

The daemon sends each piece's bytes in its piece message; they are written at
their offsets into a temp file beside the output (same folder: the rename is
atomic), never at the output path itself. Only when the call ended OK (the
daemon verified ``--digest`` before that), every piece the started message
announced has arrived and the bytes add up to the content length, is the temp
file fsynced and renamed over the output; any failure removes it. Dragonfly's
dfget writes the output path directly (src/bin/dfget/main.rs at ff17c0b, the
``transfer_from_dfdaemon`` branch) and removes it on failure; Damselfly keeps
its promise that the output path never holds a partial file.

One piece is in memory at a time (the message being written): the content is
never held whole.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from ..errors import StorageError

MODE = 0o644  # Dragonfly's dfget DEFAULT_OUTPUT_FILE_MODE


class TransferFile:
    """The temp file the streamed pieces go to, until :meth:`commit` or :meth:`discard`."""

    def __init__(self, output: Path, *, overwrite: bool) -> None:
        self.output = output
        self.overwrite = overwrite
        self.tmp = output.parent / f".{output.name}.damselfly-{secrets.token_hex(4)}.tmp"
        self.content_length: int | None = None
        self.expected: set[int] = set()
        self.received: set[int] = set()
        self.written = 0
        try:
            self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
        except OSError as e:
            raise StorageError(f"cannot create {self.tmp}: {e.strerror}") from None

    def started(self, content_length: int, pieces: list[int]) -> None:
        """The content's length and the numbers of the pieces to come."""
        self.content_length = content_length
        self.expected = set(pieces)
        assert self.fd is not None
        os.ftruncate(self.fd, content_length)

    def piece(self, number: int, offset: int, content: bytes) -> None:
        """Write one piece at ``offset``; a piece sent twice is written once."""
        if number in self.received:
            return
        if self.content_length is None:
            raise StorageError(f"the daemon sent piece {number} before the content length")
        if offset + len(content) > self.content_length:
            raise StorageError(f"piece {number} ends past the content length {self.content_length}")
        assert self.fd is not None
        view = memoryview(content)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n
        self.received.add(number)
        self.written += len(content)

    def incomplete(self) -> str | None:
        """What is missing for the content to be whole; None when nothing is."""
        if self.content_length is None:
            return "the daemon never said how long the content is"
        missing = self.expected - self.received
        if missing or self.written != self.content_length:
            return (
                f"{self.written} of {self.content_length} bytes arrived, "
                f"{len(missing)} announced piece(s) missing"
            )
        return None

    def commit(self) -> None:
        """Everything arrived (:meth:`incomplete` is None): fsync and rename into place
        (without --overwrite, never over a file that appeared meanwhile)."""
        assert self.fd is not None
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        if self.overwrite:
            os.replace(self.tmp, self.output)
        else:
            try:
                os.link(self.tmp, self.output)  # fails on an existing name: never clobbers
            except FileExistsError:
                raise StorageError(
                    f"output path {self.output} already exists; pass --overwrite to replace it"
                ) from None
            os.unlink(self.tmp)
        dir_fd = os.open(self.output.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        """After a failure: close and remove the temp file (the output path is untouched)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)
