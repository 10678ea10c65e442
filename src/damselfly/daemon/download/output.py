"""Putting a finished task at the user's output path, atomically.

The output appears only complete and verified: the whole-content digest (if
asked for) is checked on the stored content first; then a temp file beside the
output (a link, a clone or a copy) is renamed over it. On any failure the temp
file is removed and the output path is untouched.

Where the output's file system is the store's, the output is a hard link to the
stored content, as Dragonfly's dfget makes it: no byte is written twice (a copy
of each output cost the 8-host testbed, eight outputs on one disk, 3-4 s per
256 MiB flash crowd: a sixth of the transfer). The store made that content
read-only and stamped it when the task succeeded (``PieceStore``'s "sealed
content"): users other than the daemon's cannot write it, and a write by one who
can (root editing their output in place) is noticed before the next piece is
served or the next dfget is answered, and the task is dropped, never served.
Elsewhere the content is cloned (``FICLONE``: a copy-on-write reflink, on XFS or
btrfs) or copied (``copy_file_range``) to a temp file beside the output,
fsynced, and renamed over it.

An output that already exists is refused unless the caller asked to overwrite
it (``common.v2.Download.overwrite``, dfget ``--overwrite``), as Dragonfly's
dfdaemon does (dragonfly-client/src/grpc/dfdaemon_download.rs at ff17c0b, the
``output path ... is already exists`` branch); an output that already *is* the
stored content (a hard link made by an earlier run) is left as it is. The
refusal is checked before the download starts and again at the rename, which
then links without clobbering, so a file that appears meanwhile is kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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


def already_exists(output: Path) -> str:
    return f"output path {output} already exists (replace it with --overwrite)"


def refuse_existing(output: Path, content: Path | None = None, *, overwrite: bool) -> bool:
    """Raise :class:`InvalidArgument` when ``output`` exists and may not be replaced.

    Returns True when ``output`` already is ``content`` (same device and inode):
    nothing to write then."""
    try:
        st = os.stat(output)
    except FileNotFoundError:
        return False
    if content is not None:
        try:
            held = os.stat(content)
        except OSError:
            held = None
        if held is not None and (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino):
            return True
    if not overwrite:
        raise InvalidArgument(already_exists(output))
    return False


def verify_content(content: Path, digest: str) -> None:
    """Raise DigestMismatch when ``content`` does not match ``digest`` (``sha256:...``)."""
    if digest:
        verify_file(str(content), Digest.parse(digest), what="downloaded content")


FICLONE = 0x40049409  # _IOW(0x94, 9, int): clone a whole file (linux/fs.h)
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


def reflink(src: Path, dst_fd: int) -> bool:
    """Make ``dst_fd`` a copy-on-write clone of ``src``; False where the file system cannot."""
    with open(src, "rb") as f:
        try:
            fcntl.ioctl(dst_fd, FICLONE, f.fileno())
        except OSError as e:
            if e.errno in _NO_CLONE:
                return False
            raise
    return True


def copy_content(src: Path, dst_fd: int) -> None:
    """Copy ``src`` into ``dst_fd`` in the kernel (``copy_file_range``, else ``sendfile``)."""
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


def export(content: Path, output: Path, *, force_hard_link: bool = False, overwrite: bool = True) -> str:
    """Place ``content`` at ``output`` atomically; return ``"link"``, ``"reflink"``, ``"copy"``
    or ``"kept"`` (``output`` already is ``content``).

    A hard link where the output's file system is the store's, else a reflink, else a copy;
    ``force_hard_link`` (Dragonfly's ``Download.force_hard_link``) refuses the last two.
    ``overwrite=False``: an existing ``output`` is refused (:func:`refuse_existing`)."""
    if refuse_existing(output, content, overwrite=overwrite):
        return "kept"
    tmp = output.parent / f".{output.name}.damselfly-{secrets.token_hex(4)}.tmp"
    try:
        try:
            os.link(content, tmp)
            how = "link"
        except OSError as e:
            if force_hard_link:
                raise StorageError(f"cannot hard-link into {output.parent}: {e.strerror}") from e
            how = _write_copy(content, tmp)
        place(tmp, output, overwrite=overwrite)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(e.errno, f"cannot write the output {output}: {e.strerror}") from e
        raise
    sync_dir(output.parent)
    return how


def _write_copy(content: Path, tmp: Path) -> str:
    """A reflink of ``content`` at ``tmp``, else a copy; fsynced, since it is new data."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        how = "reflink" if reflink(content, fd) else "copy"
        if how == "copy":
            copy_content(content, fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    return how


def place(tmp: Path, output: Path, *, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``output``; without ``overwrite``, never over an existing file.

    The no-clobber form links then unlinks: ``link`` fails on an existing name, atomically."""
    if overwrite:
        os.replace(tmp, output)
        return
    try:
        os.link(tmp, output)
    except FileExistsError:
        raise InvalidArgument(already_exists(output)) from None
    os.unlink(tmp)


def sync_dir(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a crash."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
