"""The cache's write lock: CACHE/.lock holds the writer's pid, host and process start time.

Taken with os.link of a complete temp file (atomic, fails if the lock exists), so a lock file is never
seen half-written. A lock whose process is gone (same host, pid dead or reused) is stale and taken over; a
lock of a live process, or of another host (whose processes we cannot see), is refused.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import psutil

from netroller.errors import CacheLockedError
from netroller.storage.atomic import fsync_dir


def _this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time()}


def _read(path: Path) -> dict | None:
    """The lock's holder, None when there is no lock; {} when it cannot be parsed."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def holder_alive(holder: dict) -> bool:
    """Whether the process that wrote `holder` may still run (True when we cannot tell)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        proc = psutil.Process(holder["pid"])
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    # A pid reused by another process is not the lock's holder.
    return not isinstance(holder.get("started"), int | float) or abs(started - holder["started"]) < 1.0


def _refuse(cache: Path, path: Path, holder: dict) -> CacheLockedError:
    who = (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}" if holder else "an unknown process"
    )
    return CacheLockedError(
        f"cache {cache} is being written by {who}; wait for it or remove {path} if that process is gone"
    )


def check_unlocked(cache: Path, path: Path) -> None:
    """CacheLockedError if a live process other than this one holds the lock."""
    holder = _read(path)
    if holder is None or holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        return
    if holder and not holder_alive(holder):
        return
    raise _refuse(cache, path, holder)


def acquire(cache: Path, path: Path) -> dict:
    """Take the lock at `path` or raise CacheLockedError; returns what was written."""
    me = _this_process()
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(me))
    try:
        for _ in range(3):
            try:
                os.link(tmp, path)
                fsync_dir(path.parent)
                return me
            except FileExistsError:
                holder = _read(path)
                if holder is None:
                    continue  # released in between: try again
                if not holder or holder_alive(holder):
                    raise _refuse(cache, path, holder) from None
                # Stale: move it aside under a unique name, so two takers cannot both remove a fresh lock.
                stale = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
                try:
                    os.rename(path, stale)
                except FileNotFoundError:
                    continue
                if _read(stale) != holder:
                    # Another process took it over between our read and the rename: give its lock back.
                    try:
                        os.link(stale, path)
                    except FileExistsError:
                        pass
                stale.unlink(missing_ok=True)
        raise _refuse(cache, path, _read(path) or {})
    finally:
        tmp.unlink(missing_ok=True)


def release(path: Path, me: dict) -> None:
    """Remove the lock if it is still ours."""
    if _read(path) == me:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
