"""CacheWriter: create or resume a latent cache and commit it shard by shard.

    writer = CacheWriter.create(root, key, manifest, shard_size=64)   # driver: new, or resume if equal
    with writer.lock():                                               # one harvest at a time
        for shard in writer.pending_shards(verify=True):              # what is left (or damaged)
            CacheWriter.open(root).write_shard(shard, hidden, length, token_ids, failures)  # any worker
        writer.finalize()                                             # failures.parquet

Each shard is written whole by one process (zarr loses data when two processes write one shard), its files
are fsynced and checksummed, and only then its commit record is renamed into place: a crash anywhere before
that leaves the shard pending, and readers never see it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from netroller.errors import CacheError, CacheKeyMismatchError, CacheWriteError, ConfigError, NetrollerError
from netroller.storage import commits
from netroller.storage.atomic import atomic_path
from netroller.storage.lock import acquire, check_unlocked, release
from netroller.storage.manifest import check_manifest, manifest_sha256, read_manifest, write_manifest
from netroller.storage.meta import CacheMeta, read_meta, write_meta
from netroller.storage.schema import (
    CACHE_JSON,
    COMMITS_DIR,
    FAILURES_FILE,
    HIDDEN,
    LATENT_KEY_FIELDS,
    LENGTH,
    LOCK_FILE,
    MANIFEST_FILE,
    STORAGE_DTYPE,
    TOKEN_IDS,
    ZARR_DIR,
    CacheKey,
    CacheLayout,
    CommitRecord,
    ManifestRow,
    ShardFileRecord,
)
from netroller.storage.shard_format import (
    LENGTH_DTYPE,
    TOKEN_DTYPE,
    check_array_metadata,
    create_arrays,
    file_crc32c,
    float_to_bf16_bits,
)


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """Turn an OS write error (disk full, read-only, quota) into one CacheWriteError line naming `what`."""
    try:
        yield
    except NetrollerError:
        raise
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise CacheWriteError(
            f"{what}: {err.strerror or err}{where}; committed shards are kept, nothing half-written is "
            "committed: fix the cause (e.g. free space) and re-run the same harvest to resume"
        ) from err


def _check_resumable(root: Path, layout: CacheLayout) -> None:
    """CacheError naming the file when the manifest or array metadata of a cache about to be resumed are
    damaged: more shards written beside them would be unreadable, so resuming is refused (overwrite rebuilds)."""
    rows = read_manifest(root, samples=layout.samples, shard_size=layout.shard_size)
    if manifest_sha256(rows) != layout.manifest_sha256:
        raise CacheError(
            f"cache manifest {root / MANIFEST_FILE} does not match the manifest_sha256 in {CACHE_JSON}"
        )
    check_array_metadata(root, layout)


# The fields of a cache key that say which samples a cache holds and how it was built, beside its latents.
_SAMPLE_FIELDS = tuple(f.name for f in fields(CacheKey) if f.name not in LATENT_KEY_FIELDS)


def _key_differences(cached: CacheKey, asked: CacheKey) -> list[str]:
    """One line per way the cache at hand differs from the one a harvest asks for ("tokens: cache has 2,
    asked for 3"): the first field on which its latents differ (`LatentKey.mismatch`, the same layers), then
    every differing sample field."""
    diffs = []
    latent = asked.latent_key().mismatch(cached.latent_key(), same_layers=True)
    if latent is not None:
        name, mine, theirs = latent
        diffs.append(f"{name}: cache has {theirs!r}, asked for {mine!r}")
    for name in _SAMPLE_FIELDS:
        theirs, mine = getattr(cached, name), getattr(asked, name)
        if mine != theirs:
            diffs.append(f"{name}: cache has {theirs!r}, asked for {mine!r}")
    return diffs


FAILURES_SCHEMA = pa.schema([("sample_token", pa.string()), ("shard", pa.int64()), ("reason", pa.string())])


class CacheWriter:
    """Writes one cache. Create it once (driver); `open` it in each worker process."""

    def __init__(self, root: Path, meta: CacheMeta, tokens: Sequence[str] | None = None):
        self.root = Path(root)
        self.key = meta.key
        self.layout = meta.layout
        self._tokens = list(tokens) if tokens is not None else None

    # ---- creating and opening -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | Path,
        key: CacheKey,
        manifest: Sequence[ManifestRow],
        shard_size: int,
        *,
        overwrite: bool = False,
    ) -> CacheWriter:
        """A new cache at `root`, or the existing one there if it holds these latents (`_key_differences`)
        for this manifest and shard size.

        An existing cache built for something else raises CacheKeyMismatchError naming the first differing
        field, unless `overwrite` (then it is replaced, unless a live process holds its lock).
        """
        root = Path(root)
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ConfigError(f"shard_size must be an integer >= 1, got {shard_size!r}")
        manifest = list(manifest)
        check_manifest(manifest)
        digest = manifest_sha256(manifest)
        if root.exists() and not root.is_dir():
            raise CacheError(f"cache path {root} exists and is not a folder")
        if root.is_dir() and any(root.iterdir()):
            if not (root / CACHE_JSON).exists():
                raise CacheError(f"{root} exists, is not empty and is not a latent cache (no {CACHE_JSON})")
            try:
                old = read_meta(root)
            except CacheError:
                if not overwrite:
                    raise
            else:
                diffs = _key_differences(old.key, key)
                if old.layout.shard_size != shard_size:
                    diffs.append(f"shard_size: cache has {old.layout.shard_size}, asked for {shard_size}")
                if old.layout.manifest_sha256 != digest:
                    diffs.append(
                        f"manifest: cache has {old.layout.samples} samples (sha256 {old.layout.manifest_sha256[:12]}), "
                        f"asked for {len(manifest)} samples (sha256 {digest[:12]})"
                    )
                if not diffs:
                    try:
                        _check_resumable(root, old.layout)
                    except CacheError:
                        if not overwrite:
                            raise
                    else:
                        return cls(root, old, [r.sample_token for r in manifest])
                elif not overwrite:
                    raise CacheKeyMismatchError(
                        f"cache {root} was built for something else: {diffs[0]} (overwrite replaces it)"
                    )
            check_unlocked(root, root / LOCK_FILE)
        layout = CacheLayout(
            samples=len(manifest),
            layers=len(key.layers),
            tokens=key.tokens,
            hidden_size=key.hidden_size,
            shard_size=shard_size,
            dtype=key.dtype,
            storage_dtype=STORAGE_DTYPE[key.dtype],
            manifest_sha256=digest,
            cache_id=uuid.uuid4().hex,
        )
        meta = CacheMeta(key=key, layout=layout)
        # Built beside the target and renamed into place: a crash leaves the old cache or none, never half.
        with _writing(f"cannot create the cache at {root}"), atomic_path(root) as tmp:
            tmp.mkdir()
            create_arrays(tmp, layout, logical_dtype=key.dtype)
            write_manifest(tmp, manifest, shard_size)
            (tmp / COMMITS_DIR).mkdir()
            write_meta(tmp, meta)
        return cls(root, meta, [r.sample_token for r in manifest])

    @classmethod
    def open(cls, root: str | Path) -> CacheWriter:
        """The existing cache at `root` (for a worker process); MissingPathError / CacheError otherwise."""
        return cls(Path(root), read_meta(root))

    # ---- shards ---------------------------------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    @property
    def shard_size(self) -> int:
        return self.layout.shard_size

    def shard_rows(self, shard: int) -> range:
        return self.layout.shard_rows(shard)

    def pending_shards(self, *, verify: bool = False) -> list[int]:
        """Shards without a valid commit record, ascending.

        Cheap by default (record present, of this cache, shard files present with the committed sizes).
        `verify=True` also re-hashes each committed shard's files, so damaged shards come back as pending.
        """
        valid, _, _ = commits.scan_commits(self.root, self.layout, full=verify)
        return [s for s in range(self.num_shards) if s not in valid]

    def invalidate(self, shards: Sequence[int]) -> list[int]:
        """Remove the commit records of `shards` (they become pending); returns those that had one."""
        removed = []
        for shard in shards:
            self.layout.shard_rows(shard)  # range check
            if commits.remove_commit(self.root, shard):
                removed.append(shard)
        return removed

    def write_shard(
        self,
        shard: int,
        hidden: np.ndarray,
        length: np.ndarray,
        token_ids: np.ndarray,
        failures: Sequence[tuple[str, str]],
    ) -> CommitRecord:
        """Write one whole shard and commit it.

        hidden [rows, L, T, H] float (uint16 bits accepted for bfloat16), length [rows] int in [0, T]
        (0 for failed samples), token_ids [rows, max(T-1, 1)] int (-1 pad), failures (sample_token, reason)
        of samples in this shard. Rewriting a committed shard first withdraws its commit.
        """
        rows = self.layout.shard_rows(shard)
        hidden, length, token_ids = self._check_shard(shard, rows, hidden, length, token_ids)
        failures = tuple((str(t), str(r)) for t, r in failures)
        self._check_failures(shard, rows, failures, length)
        with _writing(f"cannot write shard {shard} of {self.root}"):
            return self._write_and_commit(shard, rows, hidden, length, token_ids, failures)

    def _write_and_commit(
        self,
        shard: int,
        rows: range,
        hidden: np.ndarray,
        length: np.ndarray,
        token_ids: np.ndarray,
        failures: tuple[tuple[str, str], ...],
    ) -> CommitRecord:
        commits.remove_commit(self.root, shard)
        # zarr reads an existing shard file's index before rewriting it, and fails on a damaged one: drop the
        # old files first (the shard is rewritten whole anyway), so that a re-run repairs any damage.
        for rel in commits.expected_files(self.layout, shard).values():
            (self.root / rel).unlink(missing_ok=True)
        region = slice(rows.start, rows.stop)
        # zarr keeps write_empty_chunks per opened array, not in the metadata: open with it set, so that an
        # all-zero shard (every sample failed) is still written out as files the commit can cover.
        with zarr.config.set({"array.write_empty_chunks": True}):
            group = zarr.open_group(self.root / ZARR_DIR, mode="r+", zarr_format=3)
            group[HIDDEN][region] = hidden
            group[LENGTH][region] = length
            group[TOKEN_IDS][region] = token_ids
        files = {}
        for name, rel in commits.expected_files(self.layout, shard).items():
            path = self.root / rel
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            nbytes, crc = file_crc32c(path)
            files[name] = ShardFileRecord(path=rel, nbytes=nbytes, crc32c=crc)
        record = CommitRecord(
            shard=shard,
            rows=(rows.start, rows.stop),
            files=files,
            failures=failures,
            cache_id=self.layout.cache_id,
            time=time.time(),
        )
        commits.write_commit(self.root, record)  # last: the shard now exists for readers
        return record

    def finalize(self) -> int:
        """Write failures.parquet (sample_token, shard, reason) from the valid commit records, atomically;
        returns how many samples failed."""
        valid, _, _ = commits.scan_commits(self.root, self.layout)
        rows = [(t, shard, r) for shard in sorted(valid) for t, r in valid[shard].failures]
        table = pa.Table.from_arrays(
            [
                pa.array([t for t, _, _ in rows], pa.string()),
                pa.array([s for _, s, _ in rows], pa.int64()),
                pa.array([r for _, _, r in rows], pa.string()),
            ],
            schema=FAILURES_SCHEMA,
        )
        with (
            _writing(f"cannot write {self.root / FAILURES_FILE}"),
            atomic_path(self.root / FAILURES_FILE) as tmp,
        ):
            pq.write_table(table, tmp)
        return len(rows)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Context manager holding the cache's exclusive write lock; CacheLockedError if a live process has it."""
        path = self.root / LOCK_FILE
        with _writing(f"cannot take the write lock of {self.root}"):
            me = acquire(self.root, path)
        try:
            yield
        finally:
            release(path, me)

    # ---- helpers --------------------------------------------------------------------------------------

    def _check_shard(
        self, shard: int, rows: range, hidden: np.ndarray, length: np.ndarray, token_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lay = self.layout
        n = len(rows)
        hidden, length, token_ids = np.asarray(hidden), np.asarray(length), np.asarray(token_ids)
        want = (n, lay.layers, lay.tokens, lay.hidden_size)
        if hidden.shape != want:
            raise CacheError(
                f"shard {shard}: hidden has shape {hidden.shape}, expected {want} (rows, L, T, H)"
            )
        if length.shape != (n,) or not np.issubdtype(length.dtype, np.integer):
            raise CacheError(
                f"shard {shard}: length must be integers of shape {(n,)}, got {length.dtype} {length.shape}"
            )
        if n and (length.min() < 0 or length.max() > lay.tokens):
            raise CacheError(
                f"shard {shard}: length values must lie in [0, {lay.tokens}], got {length.min()}..{length.max()}"
            )
        if token_ids.shape != (n, lay.token_width) or not np.issubdtype(token_ids.dtype, np.integer):
            raise CacheError(
                f"shard {shard}: token_ids must be integers of shape {(n, lay.token_width)}, "
                f"got {token_ids.dtype} {token_ids.shape}"
            )
        if lay.dtype == "bfloat16":
            if hidden.dtype == np.uint16:
                stored = hidden  # already bfloat16 bits
            elif np.issubdtype(hidden.dtype, np.floating):
                stored = float_to_bf16_bits(hidden)
            else:
                raise CacheError(
                    f"shard {shard}: hidden must be float or uint16 bfloat16 bits, got {hidden.dtype}"
                )
        else:
            if not np.issubdtype(hidden.dtype, np.floating):
                raise CacheError(f"shard {shard}: hidden must be floating point, got {hidden.dtype}")
            stored = hidden.astype(lay.storage_dtype, copy=False)
        return (
            np.ascontiguousarray(stored),
            length.astype(LENGTH_DTYPE),
            token_ids.astype(TOKEN_DTYPE),
        )

    def _check_failures(
        self, shard: int, rows: range, failures: tuple[tuple[str, str], ...], length: np.ndarray
    ) -> None:
        if not failures:  # nothing to check: don't read the manifest (a worker opens a writer per shard)
            return
        if self._tokens is None:
            manifest = read_manifest(
                self.root, samples=self.layout.samples, shard_size=self.layout.shard_size
            )
            self._tokens = [r.sample_token for r in manifest]
        in_shard: dict[str, list[int]] = {}
        for r in rows:
            in_shard.setdefault(self._tokens[r], []).append(r)
        for token, reason in failures:
            if token not in in_shard:
                raise CacheError(f"shard {shard}: failed sample {token!r} is not one of this shard's samples")
            if any(length[r - rows.start] != 0 for r in in_shard[token]):
                raise CacheError(f"shard {shard}: failed sample {token!r} must have length 0 ({reason})")
