"""Files and folders that are whole or absent: every file and cached folder pieceboard writes goes through here.

- `atomic_write_text` / `atomic_write_bytes`: temp file beside the target, then `os.replace`; a reader never sees
  half a file.
- `staged_folder`: a folder built under a temporary name, marked complete, then renamed into place; temporary
  folders left by a crashed or killed process are removed by the next one.
- `storage_errors`: a full disk, a read-only or missing folder, a name too long: one line naming the path
  (exit 2), never a traceback.

Files and folders get the permissions the user's umask gives ordinary files (temp files would be 0600 / 0700), so a
results or cache folder shared with a group stays readable by it.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pieceboard._console import PieceboardError

COMPLETE = ".complete"  # written last inside a staged folder: its presence means the folder is whole
_STAGING = ".staging"  # suffix of temporary folders; the name also carries host and pid to find stale ones


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; restored at once
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class StorageError(PieceboardError):
    """A file or folder could not be written (disk full, read-only, permissions, name too long)."""


_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a parent is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.EISDIR: "is a folder, not a file",
}


def describe_storage_error(exc: OSError, path: Path | str | None = None) -> str | None:
    """One line for an OSError caused by the file system, or None when it is something else."""
    reason = _STORAGE_ERRNOS.get(exc.errno or 0)
    if reason is None:
        return None
    where = path or exc.filename
    return f"cannot write {where}: {reason}"


@contextmanager
def storage_errors(path: Path | str | None = None) -> Iterator[None]:
    """Turn a file-system OSError inside the block into a `StorageError` naming `path` (or the failing file)."""
    try:
        yield
    except OSError as exc:
        message = describe_storage_error(exc, path)
        if message is None:
            raise
        raise StorageError(message) from None


def _chmod_default(path: Path, folder: bool) -> None:
    os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)


def make_folder(path: Path) -> Path:
    """`mkdir -p` with one-line errors (the path is a file, read-only, ...)."""
    with storage_errors(path):
        if path.exists() and not path.is_dir():
            raise StorageError(f"cannot write {path}: it is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to a temporary file beside `path`, then rename: a reader never sees half a file.

    Raises:
        StorageError: The disk is full, the folder read-only, the name too long...; nothing is left behind.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes (a picture, ...) to a temporary file beside `path`, then rename; errors as `atomic_write_text`."""
    make_folder(path.parent)
    with storage_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            _chmod_default(Path(tmp), folder=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def is_complete(folder: Path) -> bool:
    """Whether a staged folder was finished and renamed into place."""
    return (folder / COMPLETE).is_file()


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.{socket.gethostname()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_staging(target: Path) -> None:
    """Delete temporary folders of `target` whose process on this host is gone (a crash or kill -9)."""
    prefix = _staging_prefix(target)
    if not target.parent.is_dir():
        return
    for entry in target.parent.iterdir():
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_STAGING)):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def staged_folder(target: Path, note: str = "") -> Iterator[Path]:
    """Build a folder under a temporary name beside `target`, then mark it complete and rename it into place.

    An exception (or a signal) inside the block removes the temporary folder; one left by a process that was
    killed is removed by the next call for the same target. When two processes build the same target at once, the
    first rename wins and the other's copy is discarded (both built the same content).

    Args:
        target: The folder to create. An incomplete folder already there is replaced.
        note: Text stored in the completeness marker.

    Yields:
        The temporary folder to fill.

    Raises:
        StorageError: The disk filled up or the folder cannot be written; nothing partial is left.
    """
    make_folder(target.parent)
    remove_stale_staging(target)
    with storage_errors(target):
        prefix = f"{_staging_prefix(target)}{os.getpid()}."
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=_STAGING))
    try:
        _chmod_default(tmp, folder=True)
        with storage_errors(target):
            yield tmp
            (tmp / COMPLETE).write_text(note, encoding="utf-8")
            if target.exists() and not is_complete(target):
                shutil.rmtree(target)  # not renamed into place by us, so not to be trusted
            try:
                os.replace(tmp, target)
            except OSError:
                if not is_complete(target):  # not another process's finished copy: a real error
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
