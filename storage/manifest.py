"""manifest.parquet: which sample, asked which of its questions, lies in which row and shard of the cache."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from netroller.errors import CacheError, DataError
from netroller.storage.atomic import atomic_path
from netroller.storage.schema import MANIFEST_FILE, ManifestRow

SCHEMA = pa.schema(
    [
        ("sample_token", pa.string()),
        ("row", pa.int64()),
        ("shard", pa.int64()),
        ("scene_token", pa.string()),
        ("frame_index", pa.int64()),
        ("timestamp", pa.int64()),
        ("question", pa.int64()),
        ("category", pa.string()),
    ]
)


def check_manifest(rows: Sequence[ManifestRow]) -> None:
    """DataError for an empty manifest, or a sample whose rows are not consecutive and numbered 0, 1, ..."""
    if not rows:
        raise DataError("the cache manifest is empty: no samples to cache")
    seen: set[str] = set()
    previous: ManifestRow | None = None
    for row in rows:
        continues = previous is not None and row.sample_token == previous.sample_token
        if not continues and row.sample_token in seen:
            raise DataError(f"the cache manifest lists sample_token {row.sample_token!r} twice")
        expected = previous.question + 1 if continues else 0
        if row.question != expected:
            raise DataError(
                f"the cache manifest gives sample_token {row.sample_token!r} question {row.question} where its "
                f"question {expected} belongs (a sample's rows are consecutive, its questions 0, 1, ...)"
            )
        seen.add(row.sample_token)
        previous = row


def manifest_sha256(rows: Sequence[ManifestRow]) -> str:
    """Hash of the rows in order; equal manifests give equal hashes."""
    h = hashlib.sha256()
    for r in rows:
        fields = (r.sample_token, r.scene_token, r.frame_index, r.timestamp, r.question, r.category)
        h.update(("\x1f".join(map(str, fields)) + "\x1e").encode())
    return h.hexdigest()


def write_manifest(root: Path, rows: Sequence[ManifestRow], shard_size: int) -> None:
    n = len(rows)
    table = pa.Table.from_arrays(
        [
            pa.array([r.sample_token for r in rows], pa.string()),
            pa.array(np.arange(n, dtype=np.int64)),
            pa.array(np.arange(n, dtype=np.int64) // shard_size),
            pa.array([r.scene_token for r in rows], pa.string()),
            pa.array([int(r.frame_index) for r in rows], pa.int64()),
            pa.array([int(r.timestamp) for r in rows], pa.int64()),
            pa.array([int(r.question) for r in rows], pa.int64()),
            pa.array([r.category for r in rows], pa.string()),
        ],
        schema=SCHEMA,
    )
    with atomic_path(Path(root) / MANIFEST_FILE) as tmp:
        pq.write_table(table, tmp)


def read_manifest(root: str | Path, *, samples: int, shard_size: int) -> list[ManifestRow]:
    """Load and check the manifest against the layout; CacheError naming the path when it is malformed."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        raise CacheError(f"cache manifest {path} is missing")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise CacheError(f"cache manifest {path} is not readable Parquet: {err}") from err
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise CacheError(f"cache manifest {path} has no column {missing[0]!r}")
    if table.num_rows != samples:
        raise CacheError(f"cache manifest {path} has {table.num_rows} rows, cache.json says {samples}")
    try:
        table = table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowException, ValueError) as err:
        raise CacheError(f"cache manifest {path} has columns of the wrong type: {err}") from err
    nulls = [name for name in SCHEMA.names if table.column(name).null_count]
    if nulls:
        raise CacheError(f"cache manifest {path}: column {nulls[0]!r} has missing values")
    cols = table.to_pydict()
    expect_rows = np.arange(samples, dtype=np.int64)
    if not np.array_equal(np.asarray(cols["row"]), expect_rows):
        raise CacheError(f"cache manifest {path}: column 'row' is not 0..{samples - 1} in order")
    if not np.array_equal(np.asarray(cols["shard"]), expect_rows // shard_size):
        raise CacheError(f"cache manifest {path}: column 'shard' disagrees with shard size {shard_size}")
    names = ("sample_token", "scene_token", "frame_index", "timestamp", "question", "category")
    rows = [
        ManifestRow(**dict(zip(names, values, strict=True)))
        for values in zip(*(cols[n] for n in names), strict=True)
    ]
    try:
        check_manifest(rows)
    except DataError as err:
        raise CacheError(f"cache manifest {path}: {err}") from err
    return rows
