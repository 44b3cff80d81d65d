"""Commit records: a shard exists for readers only once commits/NNNNNN.json says it was written whole.

Checking a record comes in two strengths: `cheap` (record parses, belongs to this cache and shard, each
shard file exists with the committed size: a few stats, used on resume and by readers) and `full` (also
re-hashes every shard file's bytes against the recorded crc32c: used by verify).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from netroller.errors import CacheError
from netroller.storage.atomic import fsync_dir, write_json_atomic
from netroller.storage.schema import ARRAY_NAMES, COMMITS_DIR, CacheLayout, CommitRecord, commit_name
from netroller.storage.shard_format import array_specs, file_crc32c, shard_relpath


def commit_path(root: Path, shard: int) -> Path:
    return Path(root) / COMMITS_DIR / commit_name(shard)


def write_commit(root: Path, record: CommitRecord) -> None:
    write_json_atomic(commit_path(root, record.shard), record.to_dict())


def remove_commit(root: Path, shard: int) -> bool:
    """Remove a shard's commit record (durably); True if there was one."""
    path = commit_path(root, shard)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def read_commit(root: Path, shard: int) -> CommitRecord | None:
    """The shard's record, None when there is none; CacheError naming the file when it is malformed."""
    path = commit_path(root, shard)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CacheError(f"commit record {path} is unreadable: {err}") from err
    try:
        return CommitRecord.from_dict(json.loads(text))
    except (json.JSONDecodeError, CacheError) as err:
        raise CacheError(f"commit record {path} is malformed: {err}") from err


def expected_files(layout: CacheLayout, shard: int) -> dict[str, str]:
    """Array name -> shard file path (relative to the root) that a commit of `shard` must cover."""
    specs = array_specs(layout)
    return {name: shard_relpath(name, shard, len(specs[name].shape)) for name in ARRAY_NAMES}


def problem(root: Path, layout: CacheLayout, shard: int, record: CommitRecord, *, full: bool) -> str | None:
    """Why `record` does not prove `shard` is whole, or None when it does."""
    rows = layout.shard_rows(shard)
    if record.cache_id != layout.cache_id:
        return "its commit record belongs to another cache (cache_id differs)"
    if record.shard != shard or tuple(record.rows) != (rows.start, rows.stop):
        return f"its commit record is for shard {record.shard} rows {record.rows}, not rows {(rows.start, rows.stop)}"
    expect = expected_files(layout, shard)
    if set(record.files) != set(expect):
        return f"its commit record covers arrays {sorted(record.files)}, expected {sorted(expect)}"
    for name, rel in expect.items():
        rec = record.files[name]
        path = Path(root) / rel
        if rec.path != rel:
            return f"its commit record names {rec.path} for array {name}, expected {rel}"
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return f"shard file {rel} is missing"
        if size != rec.nbytes:
            return f"shard file {rel} has {size} bytes, its commit record says {rec.nbytes}"
        if full:
            _, crc = file_crc32c(path)
            if crc != rec.crc32c:
                return (
                    f"shard file {rel} has crc32c {crc}, its commit record says {rec.crc32c} (bytes changed)"
                )
    return None


def scan_commits(
    root: Path, layout: CacheLayout, *, full: bool = False
) -> tuple[dict[int, CommitRecord], dict[int, str], list[int]]:
    """(valid records by shard, damaged shards -> reason, shards with no record)."""
    valid: dict[int, CommitRecord] = {}
    damaged: dict[int, str] = {}
    missing: list[int] = []
    for shard in range(layout.num_shards):
        try:
            record = read_commit(root, shard)
        except CacheError as err:
            damaged[shard] = str(err)
            continue
        if record is None:
            missing.append(shard)
            continue
        reason = problem(root, layout, shard, record, full=full)
        if reason is None:
            valid[shard] = record
        else:
            damaged[shard] = reason
    return valid, damaged, missing
