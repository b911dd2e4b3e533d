"""Files and folders that are whole or absent: every file and cached folder pieceboard writes goes through here.

- `atomic_write_text` / `atomic_write_bytes`: temp file beside the target, then `os.replace`; a reader never sees
  half a file.
- `staged_folder`: a folder built under a temporary name, marked complete, then renamed into place; temporary
  folders left by a crashed or killed process are removed by the next one.
- `storage_errors`: a full disk, a read-only or missing folder, a name too long: one line naming the path
  (exit 2), never a traceback.
- `lock_folder`: one writer per output folder; a second one fails at once, naming the holder.

Files and folders get the permissions the user's umask gives ordinary files (temp files would be 0600 / 0700), so a
results or cache folder shared with a group stays readable by it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from pieceboard._console import PieceboardError

COMPLETE = ".complete"  # written last inside a staged folder: its presence means the folder is whole
LOCK = ".lock"  # inside a locked folder: flock'ed by the writer, and records who that is
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
    errno.ENOLCK: "the file system offers no locks",
    errno.ENOENT: "the folder does not exist or cannot hold files",
    errno.ELOOP: "it is a symbolic link, which pieceboard does not follow here; remove it",
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


def require_space(folder: Path, needed: int, what: str, advice: str = "choose another folder") -> None:
    """Fail now, with one line, when `folder`'s disk has less than `needed` bytes free for `what`.

    Raises:
        StorageError: Naming the folder, what needs the space, how much is free, and `advice`.
    """
    free = shutil.disk_usage(folder).free
    if free < needed:
        need, have = _sizes(needed, free)
        raise StorageError(
            f"cannot write {what} in {folder}: it needs about {need} and only {have} are free on its disk; free some "
            f"space or {advice}"
        )


def _sizes(needed: int, free: int) -> tuple[str, str]:
    """Two byte counts in the largest unit that still tells them apart (2.0 MB against 2.0 MB says nothing)."""
    for scale, unit, digits in ((2**30, "GB", 1), (2**20, "MB", 1), (2**10, "KB", 1)):
        need, have = f"{needed / scale:.{digits}f} {unit}", f"{free / scale:.{digits}f} {unit}"
        if need != have and needed >= scale:
            return need, have
    return f"{needed:,} bytes", f"{free:,} bytes"


def require_writable(path: Path) -> None:
    """Fail now, with one line, when a file cannot be written at `path` (before minutes of work that end there).

    Raises:
        StorageError: The folder cannot be made or written, or `path` is a folder.
    """
    folder = make_folder(path.parent)
    with storage_errors(path):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
        os.close(fd)
        os.unlink(tmp)


def _chmod_default(path: Path, folder: bool) -> None:
    os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)


def make_folder(path: Path) -> Path:
    """`mkdir -p` with one-line errors (the path is a file, read-only, ...)."""
    with storage_errors(path):
        if path.exists() and not path.is_dir():
            raise StorageError(f"cannot write {path}: it is a file, not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileNotFoundError:  # mkdir -p fails this way only where folders cannot be made at all (/proc)
            raise StorageError(f"cannot create the folder {path} here") from None
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


def pid_alive(pid: int) -> bool:
    """Whether a process of this host runs with that pid."""
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
        if pid.isdigit() and not pid_alive(int(pid)):
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


class FolderInUse(PieceboardError):
    """Another process holds the lock on a folder (see `lock_folder`)."""


# Lock files held by this process. A child made by fork() inherits their descriptors, and with them the lock: a
# decoder worker that outlived a killed parent would keep the folder locked. The child closes its copies (closing,
# unlike LOCK_UN, leaves the parent's lock in place).
_HELD: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@contextmanager
def lock_folder(folder: Path, what: str, name: str = LOCK, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `folder` while the block runs; a second writer fails at once, naming this one.

    The lock is `fcntl.flock` on `<folder>/.lock`. The operating system releases it when its holder ends, however it
    ends (kill -9 included), so a lock left by a dead process is simply taken over; the file's content only says who
    holds it: pid, host, what it is doing, its command line and start time. The file stays in place afterwards
    (removing it would let two processes lock two different files of the same name), except that a folder this call
    created and that holds nothing but the lock file when the block fails is removed again: a refused benchmark
    leaves no empty output folder behind. A symbolic link, or anything but a plain file, in the lock file's place is
    refused, never followed: the lock file is written, and a link would aim that at another file.

    Args:
        folder: The folder to lock; created if missing.
        what: What the holder is doing, shown to a second writer, e.g. `pieceboard bench benchmarks/demo.toml`.
        name: The lock file's name inside `folder` (the report has its own, see pieceboard.report).
        wait: Wait for the holder to finish instead of failing.

    Raises:
        FolderInUse: Another process holds the lock (and `wait` is False).
        StorageError: The folder or its lock file cannot be created, the lock file is a link or not a file, or the
            file system has no locks.
    """
    created = not folder.exists()
    path = make_folder(folder) / name
    fd = _open_lock(folder, path, wait)
    _HELD.add(fd)
    try:
        with storage_errors(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder(what).encode(), 0)
        yield
    except BaseException:
        if created and fd in _HELD and [p.name for p in folder.iterdir()] == [name]:
            with suppress(OSError):  # still locked: another writer that opened the file finds it gone and retries
                path.unlink()
                folder.rmdir()
        raise
    finally:
        if fd in _HELD:  # not in a forked child, which closed its copy at the fork
            _HELD.discard(fd)
            with suppress(OSError):  # still locked, so nobody wrote since: an empty file tells a reader it is free
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the lock


def in_use(folder: Path) -> str | None:
    """Why `lock_folder` would fail on `folder` now (the message naming the holder), or None; writes nothing.

    Asks for a shared lock and lets it go at once: it fails only while another process holds the exclusive one.
    """
    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:  # no lock file yet (or none readable): nobody holds it, unless a link is in its place
        return describe_storage_error(exc, path) if exc.errno == errno.ELOOP else None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return _not_a_file(path)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _in_use_message(folder, path)
    except OSError:
        return None  # no locks on this file system: lock_folder says so when the run starts
    finally:
        os.close(fd)
    return None


def _open_lock(folder: Path, path: Path, wait: bool) -> int:
    """Open and flock the lock file, never through a symbolic link; returns the locked descriptor."""
    while True:
        with storage_errors(path):
            # O_NOFOLLOW: a link in the lock file's place fails (ELOOP) instead of the link's target being emptied.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)  # the umask applies
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise StorageError(_not_a_file(path))
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise FolderInUse(_in_use_message(folder, path)) from None
                # The holder before us may have removed the file (see lock_folder): a lock on a file that is no
                # longer at `path` guards nothing, so open the one that is there now.
                if _same_file(fd, path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
        os.close(fd)


def _not_a_file(path: Path) -> str:
    return f"cannot use {path} as a lock: it is not a plain file; remove it"


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _holder(what: str) -> str:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "what": what,
        "command": shlex.join(sys.argv),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    return json.dumps(holder, indent=1) + "\n"


def _in_use_message(folder: Path, path: Path) -> str:
    advice = "wait for it to finish or use another output folder (--output)"
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        started = datetime.fromisoformat(holder["started"])
        since = started.strftime("%H:%M" if started.date() == datetime.now().date() else "%Y-%m-%d %H:%M")
        who = f"pid {holder['pid']} on host {holder['host']} ({holder['what']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has only just taken the lock and not written yet
        who = "another process"
    return f"{folder} is in use by {who}; {advice}"
