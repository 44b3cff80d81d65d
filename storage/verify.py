"""Check a cache's shards against their commit records (`netroller cache verify`) and summarize it (`info`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netroller.storage import commits
from netroller.storage.manifest import read_manifest
from netroller.storage.meta import read_meta
from netroller.storage.shard_format import check_array_metadata


@dataclass
class VerifyReport:
    """Outcome of re-hashing every committed shard."""

    ok: list[int] = field(default_factory=list)
    """Shards whose files match their commit records byte for byte."""
    damaged: list[tuple[int, str]] = field(default_factory=list)
    """(shard, reason): a commit record exists but is malformed or its files changed or vanished."""
    uncommitted: list[int] = field(default_factory=list)
    """Shards never committed (not harvested yet, or a harvest stopped before them)."""

    @property
    def clean(self) -> bool:
        return not self.damaged


def verify_cache(root: str | Path) -> VerifyReport:
    """Re-hash every committed shard file; CacheError if cache.json, the manifest or array metadata are bad."""
    root = Path(root)
    meta = read_meta(root)
    read_manifest(root, samples=meta.layout.samples, shard_size=meta.layout.shard_size)
    check_array_metadata(root, meta.layout)
    valid, damaged, missing = commits.scan_commits(root, meta.layout, full=True)
    return VerifyReport(ok=sorted(valid), damaged=sorted(damaged.items()), uncommitted=sorted(missing))


def _bytes_on_disk(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total


def cache_info(root: str | Path) -> dict[str, Any]:
    """Key, sample and shard counts, size on disk and failures (cheap: no re-hashing)."""
    root = Path(root)
    meta = read_meta(root)
    lay = meta.layout
    read_manifest(root, samples=lay.samples, shard_size=lay.shard_size)
    valid, damaged, missing = commits.scan_commits(root, lay)
    failures = [(t, r) for s in sorted(valid) for t, r in valid[s].failures]
    committed_samples = sum(len(lay.shard_rows(s)) for s in valid)
    return {
        "path": str(root),
        "key": meta.key.to_dict(),
        "layout": lay.to_dict(),
        "samples": lay.samples,
        "samples_committed": committed_samples,
        "samples_failed": len(failures),
        "shards": {
            "committed": len(valid),
            "total": lay.num_shards,
            "damaged": len(damaged),
            "pending": len(missing),
        },
        "bytes_per_sample": lay.sample_bytes(),
        "bytes_on_disk": _bytes_on_disk(root),
        "failures": [{"sample_token": t, "reason": r} for t, r in failures],
    }
