"""Writing files without losing any: atomic replacement, one writer per file, no stray temporaries.

Every file projc writes (the exported model, checkpoints, a rewritten ``--log``, ``projc plot``'s
image, ``compare``'s ``.npz`` outputs) goes through ``atomic_write``: the bytes go to a temporary
file in the destination's folder, are flushed to disk, and the temporary is renamed over the
destination. A failure at any point (a full disk, a signal, a crash) leaves the previous file whole.
The temporary's name, ``.projc-PID.HOST.RANDOM.tmp``, records the writing process: one left behind
by a process that died (SIGKILL) is removed by the next projc that writes in that folder
(``remove_stale_temps``), and one of a live process is left alone.

Links: projc never writes through a symbolic link and never replaces one. A destination that is a
link (``-o``, the checkpoint file, ``--log``, ``plot -o``, ``compare --save-*``) is refused with one
line before anything runs (``refuse_link``); a rename, should a link appear later, replaces the link
and leaves its target alone, and the log is appended to with ``O_NOFOLLOW``.

One writer per file: ``PathLock(path)`` holds ``.NAME.projc-lock`` beside ``path``: an advisory
``flock`` on it, and the holder's pid, host and start time as its text. The kernel drops a ``flock``
when its process dies, even by SIGKILL, so the file of a dead run is stale by construction and the
next run takes it over (with a one-line note naming the dead pid); a live holder makes the second
run exit with one line naming its pid. Where ``flock`` is unavailable (some network file systems)
the pid in the file decides: a live pid on this host, or any pid on another host, holds the lock.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

from projc.errors import ProjcError

TEMP_PREFIX = ".projc-"
TEMP_SUFFIX = ".tmp"
LOCK_SUFFIX = ".projc-lock"


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


_TEMP_RE = re.compile(r"^\.projc-(\d+)\.([0-9a-f]{8})\.[0-9a-z]+\.tmp$")


def temp_name() -> str:
    """A fresh temporary file name for this process: ``.projc-PID.HOST.RANDOM.tmp``."""
    return f"{TEMP_PREFIX}{os.getpid()}.{_host_tag()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


_swept: set[str] = set()


def remove_stale_temps(folder: str) -> list[str]:
    """Remove ``.projc-PID.HOST.*.tmp`` files in ``folder`` left by dead processes of this host
    (once per folder per process); returns the names removed."""
    folder = os.path.abspath(folder or ".")
    if folder in _swept:
        return []
    _swept.add(folder)
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = _host_tag()
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None or m.group(2) != host or pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    if removed:
        note(f"{folder}: removed {len(removed)} temporary file(s) left by projc runs that were killed "
             f"({', '.join(sorted(removed)[:3])}{', ...' if len(removed) > 3 else ''})")
    return removed


def note(message: str) -> None:
    """A one-line note on stderr (not an error)."""
    print(f"projc: note: {message}", file=sys.stderr, flush=True)


def refuse_link(path: str, what: str) -> None:
    """One line when ``path`` is a symbolic link: projc neither writes through nor replaces one."""
    if os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise ProjcError(f"{path}: {what} is a symbolic link (to {target}); projc neither writes through "
                         f"a link nor replaces one: give the file's own path, or remove the link")


def final_mode(path: str) -> int:
    """The mode a written file gets: a replaced regular file's own, else 0666 less the umask."""
    try:
        st = os.lstat(path)
        if not os.path.islink(path):
            return st.st_mode & 0o7777
    except OSError:
        pass
    umask = os.umask(0o022)  # reading the umask means setting it; restore at once
    os.umask(umask)
    return 0o666 & ~umask


def describe_os_error(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return err.strerror or str(err)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# temporaries this process is writing right now (for tests and diagnostics)
_live_temps: set[str] = set()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, what: str,
                 keep: str = "", make_folder: bool = True, fsync: bool = True) -> str:
    """Write ``path`` by ``write(file)`` into a temporary beside it, then a rename; returns the path.

    ``what`` names the file in messages ("the trained model"); ``keep`` completes the message on
    failure (e.g. "the previous checkpoint is kept"). An OSError (a full disk, a read-only folder)
    becomes one ProjcError naming the path; any failure, an interrupt included, removes the
    temporary and leaves the destination as it was.
    """
    path = os.fspath(path)
    if not path:
        raise ProjcError(f"{what}: the path is empty; give a file name")
    refuse_link(path, what)
    if os.path.isdir(path):
        raise ProjcError(f"{path}: is a folder; give a file name for {what}")
    folder = os.path.dirname(os.path.abspath(path))
    tail = f"; {keep}" if keep else ""
    try:
        if make_folder:
            os.makedirs(folder, exist_ok=True)
        remove_stale_temps(folder)
        tmp = os.path.join(folder, temp_name())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ProjcError(f"{path}: cannot write {what} there ({describe_os_error(e)}){tail}") from None
    _live_temps.add(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, final_mode(path))
        os.replace(tmp, path)
        if fsync:
            _fsync_folder(folder)
    except OSError as e:
        raise ProjcError(f"{path}: cannot write {what} ({describe_os_error(e)}){tail}") from None
    finally:  # any failure, KeyboardInterrupt and SIGTERM included, removes the temporary
        _live_temps.discard(tmp)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            pass
    return path


# -- one writer per file ----------------------------------------------------------------------------

def lock_path(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{LOCK_SUFFIX}")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "?"


def _holder_text() -> str:
    pid = os.getpid()
    return (f"pid {pid} host {socket.gethostname()} started {_start_time(pid)} "
            f"at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")


def _parse_holder(text: str) -> dict[str, str]:
    words = text.split()
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1, 2)}


def _read_holder(fd: int) -> str:
    """The holder's text; it writes it just after taking the flock, so wait a moment for it."""
    text = ""
    for _ in range(50):
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        if text.endswith("\n"):
            break
        time.sleep(0.02)
    return text


def _holder_alive(info: dict[str, str]) -> bool:
    """For file systems without flock: does the recorded holder still run?"""
    if info.get("host") != socket.gethostname():
        return True  # another machine's process: assume it runs
    try:
        pid = int(info.get("pid", "0"))
    except ValueError:
        return False
    if not pid_alive(pid):
        return False
    started = info.get("started", "?")
    return started == "?" or _start_time(pid) in ("?", started)


class PathLock:
    """The one-writer lock of ``path`` (see the module docstring). ``acquire`` raises ProjcError
    naming the holder's pid; locks are per process and re-entrant (a count)."""

    _held: dict[str, PathLock] = {}

    def __init__(self, path: str, what: str, option: str):
        self.path, self.what, self.option = path, what, option
        self.file = lock_path(path)
        self.fd: int | None = None
        self.count = 0
        self.made_folders: list[str] = []

    @classmethod
    def acquire(cls, path: str, what: str, option: str) -> PathLock:
        key = lock_path(path)
        held = cls._held.get(key)
        if held is not None:
            held.count += 1
            return held
        lock = cls(path, what, option)
        lock._take()
        cls._held[key] = lock
        lock.count = 1
        return lock

    def _make_folder(self) -> None:
        folder = os.path.dirname(self.file)
        missing = []
        while not os.path.exists(folder):
            missing.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        os.makedirs(os.path.dirname(self.file), exist_ok=True)
        self.made_folders = missing  # deepest first: removed on release if still empty

    def _busy(self, text: str) -> ProjcError:
        info = _parse_holder(text)
        who = f"pid {info.get('pid', '?')}" + (f" on {info['host']}" if info.get("host") else "")
        return ProjcError(f"{self.path}: {self.what} is in use by another projc run ({who}); wait for it "
                          f"to finish or give this run another {self.option} (lock: {self.file})")

    def _take(self) -> None:
        try:
            self._make_folder()
        except OSError as e:
            raise ProjcError(f"{self.path}: cannot create its folder ({describe_os_error(e)})") from None
        for _ in range(20):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise ProjcError(f"{self.file}: the lock file is a symbolic link; remove it") from None
                raise ProjcError(f"{self.path}: cannot create the lock file {self.file} "
                                 f"({describe_os_error(e)})") from None
            previous = os.pread(fd, 4096, 0).decode(errors="replace")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise self._busy(holder) from None
            except OSError:  # no flock here: the recorded pid decides
                if previous.strip() and _holder_alive(_parse_holder(previous)):
                    os.close(fd)
                    raise self._busy(previous) from None
            # the holder may have removed the file between our open and our flock: retry then
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.file))
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = os.pread(fd, 4096, 0).decode(errors="replace")
            if previous.strip():
                info = _parse_holder(previous)
                note(f"{self.path}: taking over the lock of a projc run that ended without releasing it "
                     f"(pid {info.get('pid', '?')}, no longer running)")
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_text().encode(), 0)
            self.fd = fd
            return
        raise ProjcError(f"{self.path}: cannot take the lock {self.file}; another run keeps replacing it")

    def release(self) -> None:
        self.count -= 1
        if self.count > 0 or self.fd is None:
            return
        PathLock._held.pop(self.file, None)
        try:
            if os.path.samestat(os.fstat(self.fd), os.stat(self.file)):
                os.unlink(self.file)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        for folder in self.made_folders:
            try:
                os.rmdir(folder)  # only an empty folder this lock created
            except OSError:
                break

    def __enter__(self) -> PathLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Locks:
    """Several PathLocks taken in order and released together (a context manager)."""

    def __init__(self, items: list[tuple[str, str, str]]):
        self.items = items
        self.held: list[PathLock] = []

    def __enter__(self) -> Locks:
        try:
            for path, what, option in self.items:
                self.held.append(PathLock.acquire(path, what, option))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self.held:
            self.held.pop().release()
