"""Putting a finished task at the user's output path, atomically.

The output appears only complete and verified: the whole-content digest (if
asked for) is checked on the stored content first; then the content is cloned
(``FICLONE``: a copy-on-write reflink, on XFS or btrfs) or, where the file
system cannot, copied (``copy_file_range``) to a temp file beside the output,
fsynced, and renamed over the output. On any failure the temp file is removed
and the output path is untouched.

The output is never the store's own file: a user who edits their output in
place changes their copy only, never what the daemon serves to others or to
the next dfget (benchmarks/output_export.py: on this project's ext4 test
machine a 1 GiB copy costs about a second; a reflink nothing). Only
``force_hard_link`` (Dragonfly's ``Download.force_hard_link``) still links: the
caller asked for the store's file itself, and gets it read-only.

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
import stat
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
    """Place ``content`` at ``output`` atomically; return ``"reflink"``, ``"copy"``, ``"link"``
    (``force_hard_link`` only) or ``"kept"``.

    ``overwrite=False``: an existing ``output`` is refused (:func:`refuse_existing`)."""
    if refuse_existing(output, content, overwrite=overwrite):
        if force_hard_link:
            return "kept"
        overwrite = True  # an output linked to the store by an earlier version: made a copy now
    tmp = output.parent / f".{output.name}.damselfly-{secrets.token_hex(4)}.tmp"
    try:
        if force_hard_link:
            # The store's own file, as asked: made read-only, so an edit needs a deliberate chmod.
            mode = os.stat(content).st_mode
            os.chmod(content, stat.S_IMODE(mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            try:
                os.link(content, tmp)
            except OSError as e:
                raise StorageError(f"cannot hard-link into {output.parent}: {e.strerror}") from e
            how = "link"
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                how = "reflink" if reflink(content, fd) else "copy"
                if how == "copy":
                    copy_content(content, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
        place(tmp, output, overwrite=overwrite)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(e.errno, f"cannot write the output {output}: {e.strerror}") from e
        raise
    sync_dir(output.parent)
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
