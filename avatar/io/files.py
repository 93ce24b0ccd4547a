"""Files the toolkit writes: the user's permissions, partial (temporary) names, and partial files left behind.

Outputs are written under a hidden partial name next to the target and moved into place when complete. Two
rules keep that invisible to the user:

* **Permissions.** A partial file is created like ``open(path, 'w')`` would create it, mode
  ``0o666 & ~umask`` (``tempfile.mkstemp`` would give 0o600, a file other users cannot read even when the user's
  umask says they may). :func:`apply_umask` gives the same mode to a file or folder some other code made with
  ``tempfile`` (``mkstemp``: 0o600, ``mkdtemp``: 0o700) before it is moved into place.
* **Partial files left behind.** The partial name of ``out.mp4`` is ``.out.partial-<pid>-<random>.mp4``. A run
  killed with SIGKILL (or a power cut) cannot remove it; the next writer of the same output calls
  :func:`remove_stale_partials`, which removes those whose process is gone (or whose pid now belongs to a
  process started after the file was last written), never one of a live writer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path

__all__ = ["PARTIAL_MARK", "apply_umask", "create_partial", "current_umask", "new_dir_mode", "new_file_mode",
           "partial_path", "remove_stale_partials"]

logger = logging.getLogger(__name__)

PARTIAL_MARK = ".partial-"
"""Partial files of ``out.mp4`` are ``.out`` + this + ``<pid>-<random>.mp4``."""

_UMASK_LOCK = threading.Lock()
_IMPORTED_AT = time.time()
_LEGACY_RANDOM = re.compile(r"[a-z0-9_]{8}")  # tempfile.mkstemp's 8 random characters (names before the pid)
_WITH_PID = re.compile(r"(\d+)-[0-9a-f]+")


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux's ``/proc/self/status``);
    elsewhere it is set and restored at once."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii",
                                                         errors="replace") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, 'w')`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def new_dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def apply_umask(path: str | Path) -> Path:
    """Give ``path`` (a file or a folder, e.g. from ``tempfile.mkstemp`` / ``mkdtemp``) the mode a plain
    ``open`` / ``mkdir`` would have given it, before it is moved into place. Returns ``path``."""
    path = Path(path)
    os.chmod(path, new_dir_mode() if path.is_dir() else new_file_mode())
    return path


def _suffix(target: Path, suffix: str | None) -> str:
    return target.suffix if suffix is None else suffix


def partial_path(target: str | Path, suffix: str | None = None) -> Path:
    """A fresh partial name for ``target``: ``.<stem>.partial-<pid>-<random><suffix>`` in the same folder
    (``suffix`` defaults to the target's, which FFmpeg needs to pick the container)."""
    target = Path(target)
    token = secrets.token_hex(4)
    return target.with_name(f".{target.stem}{PARTIAL_MARK}{os.getpid()}-{token}{_suffix(target, suffix)}")


def create_partial(target: str | Path, suffix: str | None = None) -> Path:
    """Create an empty partial file for ``target`` (see :func:`partial_path`) with the user's permissions
    (``0o666 & ~umask``, as ``open`` gives) and return its path; the caller moves it into place or removes it."""
    while True:
        path = partial_path(target, suffix)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        os.close(fd)
        return path


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:  # pragma: no cover - unknown: keep the file
        return True
    return True


def _boot_time() -> float | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith("btime "):
                return float(line.split()[1])
    return None


def _process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where the system tells (Linux); else ``None``."""
    boot = _boot_time()
    if boot is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: starttime in clock ticks
    return None


def _run_started() -> float:
    """When this process started (or, where the system does not tell, when this module was imported)."""
    started = _process_start_time(os.getpid())
    return started if started is not None else _IMPORTED_AT


def _is_stale(path: Path, rest: str) -> bool:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    match = _WITH_PID.fullmatch(rest)
    if match is None:  # an older name without a pid: stale only if written before this run started
        return _LEGACY_RANDOM.fullmatch(rest) is not None and mtime < _run_started() - 1.0
    pid = int(match.group(1))
    if pid == os.getpid():  # this process's own: another writer in it may be busy with it
        return False
    if not _pid_alive(pid):
        return True
    started = _process_start_time(pid)  # the pid was reused: its process started after the file's last write
    return started is not None and mtime < started - 1.0


def remove_stale_partials(target: str | Path, suffix: str | None = None) -> list[Path]:
    """Remove the partial files of ``target`` (see :func:`partial_path`) that interrupted runs left behind:
    those of a process that is gone, or whose pid now belongs to a process started after the file's last
    write, and nameless-pid ones (older versions) written before this run started. A live writer's file is
    never touched. Returns the removed paths."""
    target = Path(target)
    prefix, end = f".{target.stem}{PARTIAL_MARK}", _suffix(target, suffix)
    removed: list[Path] = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in entries:
        name = path.name
        if not (name.startswith(prefix) and name.endswith(end) and len(name) > len(prefix) + len(end)):
            continue
        rest = name[len(prefix):len(name) - len(end)] if end else name[len(prefix):]
        if path.is_file() and not path.is_symlink() and _is_stale(path, rest):
            try:
                path.unlink()
            except FileNotFoundError:  # another writer removed it first
                continue
            except OSError as exc:  # not ours to remove (permissions): leave it
                logger.debug("cannot remove the stale partial file %s: %s", path, exc)
                continue
            removed.append(path)
            logger.info("removed %s, left behind by an interrupted run", path)
    return removed
