"""Putting a finished task at the user's output path, atomically.

The output appears only complete and verified: the whole-content digest (if
asked for) is checked on the stored content first; then the content is
hard-linked (or, across file systems or when linking is refused, copied with
``copy_file_range``) to a temp file beside the output, fsynced, and renamed
over the output. On any failure the temp file is removed and the output path
is untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from ...errors import InvalidArgument, StorageError
from ...pieces import Digest, verify_file


def check_output_path(output: str) -> Path:
    """Validate an output path before any download starts."""
    if not output:
        raise InvalidArgument("no output path given")
    path = Path(output)
    if not path.is_absolute():
        raise InvalidArgument(f"output path {output} must be absolute")
    if path.is_dir():
        raise InvalidArgument(f"output path {output} is a directory")
    if not path.parent.is_dir():
        raise InvalidArgument(f"output folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise InvalidArgument(f"output folder {path.parent} is not writable")
    return path


def verify_content(content: Path, digest: str) -> None:
    """Raise DigestMismatch when ``content`` does not match ``digest`` (``sha256:...``)."""
    if digest:
        verify_file(str(content), Digest.parse(digest), what="downloaded content")


def _copy(src: Path, dst_fd: int) -> None:
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                n = os.copy_file_range(f.fileno(), dst_fd, size - offset, offset, offset)
            except OSError:
                n = os.sendfile(dst_fd, f.fileno(), offset, size - offset)
            if n == 0:
                raise StorageError(f"short copy of {src}")
            offset += n


def export(content: Path, output: Path, *, force_hard_link: bool = False, link: bool = True) -> str:
    """Place ``content`` at ``output`` atomically; return ``"link"`` or ``"copy"``."""
    tmp = output.parent / f".{output.name}.damselfly-{secrets.token_hex(4)}.tmp"
    how = "copy"
    try:
        linked = False
        if link or force_hard_link:
            try:
                os.link(content, tmp)
                linked = True
                how = "link"
            except OSError as e:
                if force_hard_link:
                    raise StorageError(f"cannot hard-link into {output.parent}: {e.strerror}") from e
        if not linked:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _copy(content, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(output.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return how
