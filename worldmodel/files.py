"""What is on disk is what was asked for: checksums, config identity, locks and leftovers.

Every directory the toolkit writes (a dataset, a run, a feature cache) is identified by
the settings that determine its content: :func:`config_hash` of a JSON-able dict, stored
next to the content and checked against the request when it is opened
(:func:`changed_keys` names what differs). A directory in use is locked
(:class:`DirectoryLock`), and the leftovers of killed writers (``<name>.partial-<pid>``,
``<name>.tmp-<pid>``) are found by :func:`stale_leftovers`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(identity: dict[str, Any], length: int = 10) -> str:
    """A short, stable hash of a JSON-able dict (key order does not matter)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def changed_keys(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, as ``key: stored -> requested`` (JSON round trip first,
    so tuples and lists compare equal)."""
    a, b = (flatten(json.loads(json.dumps(d, default=str))) for d in (stored, requested))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def pid_alive(pid: int | str) -> bool:
    """Whether process ``pid`` runs on this host (a name's suffix may be passed as a string)."""
    if isinstance(pid, str):
        if not pid.isdigit():
            return False
        pid = int(pid)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_leftovers(parent: str | Path, name: str, kinds: tuple[str, ...] = ("partial", "tmp")) -> list[Path]:
    """``<parent>/<name>.<kind>-<pid>`` entries whose writer process is dead."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    found = [p for kind in kinds for p in parent.glob(f"{name}.{kind}-*") if not pid_alive(p.name.rsplit("-", 1)[-1])]
    return sorted(found, key=lambda p: p.stat().st_mtime)  # oldest first


def check_dir_name(key: str, name: str) -> None:
    """Refuse a name meant for one directory inside a root that could reach outside it (a path
    separator, ``.`` or ``..``, an absolute path); the empty name (derive one) is allowed."""
    if name and (name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
        raise ValueError(f"{key} must be one directory name inside the root (no '/', '\\', '.' or '..'), "
                         f"got {name!r}")


def inside(directory: str | Path, relative: str, what: str) -> Path:
    """``directory / relative``, refused with ``ValueError`` unless it resolves inside ``directory``
    (an absolute path, ``..`` or a symbolic link leading out)."""
    base = Path(directory).resolve()
    path = (base / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(base):
        raise ValueError(f"{what} {relative!r} lies outside {directory}; only files inside it are read")
    return path


def writable_dir(path: str | Path, what: str = "directory") -> Path:
    """``path`` as a directory this process can write to (created when missing): checked before any work,
    so that results are never computed only to be lost."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, expected a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{what} {path} is not writable ({err.strerror or err}); choose another one") from None
    return path


class LockedError(RuntimeError):
    """Another process uses the directory."""


class DirectoryLock:
    """An exclusive lock on a directory (``<dir>/.lock``, ``flock``), held while a run uses it (or,
    with another ``lock_name``, on one thing in it, e.g. one evaluation's journal).

    The lock dies with its process, so a killed run never leaves a stale lock behind::

        with DirectoryLock(out_dir, "training run"):
            ...
    """

    def __init__(self, path: str | Path, what: str = "directory", lock_name: str = ".lock"):
        self.path, self.what, self.lock_name, self.fd = Path(path), what, lock_name, None

    def acquire(self, wait: bool = False) -> "DirectoryLock":
        """Take the lock; held by another process, raise :class:`LockedError` (or, with ``wait``, say
        so and wait until it is released)."""
        fd = os.open(writable_dir(self.path, self.what) / self.lock_name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            if wait and err.errno in (errno.EAGAIN, errno.EACCES):
                print(f"{self.what} {self.path} is in use by process {holder}: waiting for it", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise LockedError(f"{self.what} {self.path} is in use by process {holder}; wait for it to "
                                      f"finish or choose another directory") from None
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # at interpreter exit the modules may be gone; the OS releases the lock anyway
            pass

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_verified(path: str | Path, save) -> Path:
    """``save(tmp_path)``, rename the file into place, then record its sha256 in ``<path>.sha256``
    (written last, so a file without a matching record is unfinished or was changed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # keeps the suffix (np.save adds one)
    save(tmp)
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    record = path.with_name(path.name + ".sha256")
    tmp_record = record.with_name(f".{record.name}.tmp-{os.getpid()}")
    tmp_record.write_text(digest + "\n")
    os.replace(tmp_record, record)
    return path


def verified(path: str | Path) -> bool:
    """Whether ``path`` exists and matches the sha256 :func:`write_verified` recorded for it."""
    path = Path(path)
    record = path.with_name(path.name + ".sha256")
    if not path.is_file() or not record.is_file():
        return False
    return record.read_text().strip() == file_sha256(path)
