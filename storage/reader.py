"""CacheReader: random batches of latents by sample token, for training.

Reads go straight to the shard files' bytes (see `shard_format`): each sample of `hidden` is one uncompressed
inner chunk at an offset given by the shard's index, so a sample is one `preadv` into the output batch.
A row is served only if its shard has a valid commit record and the sample did not fail; every other row
comes back as zeros with `present=False`, never as zarr fill values posing as data.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from netroller.errors import CacheError, CacheKeyMismatchError
from netroller.storage import commits
from netroller.storage.manifest import read_manifest
from netroller.storage.meta import read_meta
from netroller.storage.schema import HIDDEN, LENGTH, CacheKey, CacheLayout, CommitRecord
from netroller.storage.shard_format import (
    ShardIndex,
    array_specs,
    bf16_bits_to_float32,
    check_array_metadata,
    pread_into,
    read_inner_chunk,
)

# Open shard files kept per reader; enough for any batch, well under the usual fd limit.
MAX_OPEN_SHARDS = 128


@dataclass
class LatentBatch:
    """Latents of a batch of samples, in the order asked for."""

    hidden: np.ndarray  # [B, L, T, H] float16 (float16 caches) or float32 (float32 and bfloat16 caches)
    length: np.ndarray  # [B] int64: valid positions (0 where not present)
    present: np.ndarray  # [B] bool: False for unknown, uncommitted or failed samples (hidden zeros)


@dataclass
class _OpenShard:
    fd: int
    index: ShardIndex  # of `hidden`
    length: np.ndarray  # [S] int32


class CacheReader:
    """Read-only view of a cache; safe to use from forked DataLoader workers (reads are positional)."""

    def __init__(self, root: str | Path, *, expect: Mapping[str, Any] | None = None):
        """Open the cache at `root`; CacheKeyMismatchError if `expect` names a key field with another value,
        CacheError naming the file if the cache is malformed."""
        self.root = Path(root)
        meta = read_meta(self.root)
        self.key: CacheKey = meta.key
        self.layout: CacheLayout = meta.layout
        if expect:
            try:
                self.key.check(expect)
            except CacheKeyMismatchError as err:
                raise CacheKeyMismatchError(
                    f"cache {self.root} does not match what was asked: {err}"
                ) from err
        check_array_metadata(self.root, self.layout)
        manifest = read_manifest(self.root, samples=self.layout.samples, shard_size=self.layout.shard_size)
        self.tokens: list[str] = [r.sample_token for r in manifest]
        self._row = {t: i for i, t in enumerate(self.tokens)}
        self._specs = array_specs(self.layout)
        self._open: OrderedDict[int, _OpenShard] = OrderedDict()
        self._pid = os.getpid()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the commit records (a harvest may have committed more shards since)."""
        valid, _, _ = commits.scan_commits(self.root, self.layout)
        self._commits: dict[int, CommitRecord] = valid
        self._failed: dict[str, str] = {t: r for rec in valid.values() for t, r in rec.failures}
        for shard in [s for s in self._open if s not in valid]:
            os.close(self._open.pop(shard).fd)

    def __len__(self) -> int:
        return self.layout.samples

    def __contains__(self, token: object) -> bool:
        row = self._row.get(token) if isinstance(token, str) else None
        return (
            row is not None and row // self.layout.shard_size in self._commits and token not in self._failed
        )

    def failures(self) -> list[tuple[str, str]]:
        """(sample_token, reason) of every failed sample in a committed shard, in row order."""
        return sorted(self._failed.items(), key=lambda tr: self._row[tr[0]])

    @property
    def committed_shards(self) -> list[int]:
        return sorted(self._commits)

    def read(self, tokens: Sequence[str]) -> LatentBatch:
        """Latents of `tokens` (any order, repeats allowed)."""
        lay = self.layout
        b = len(tokens)
        # np.empty, not zeros: zeroing 16 MiB first costs as much as the reads; absent rows are zeroed below.
        hidden = np.empty((b, lay.layers, lay.tokens, lay.hidden_size), dtype=lay.storage_dtype)
        length = np.zeros(b, dtype=np.int64)
        present = np.zeros(b, dtype=bool)
        wanted = []
        for i, token in enumerate(tokens):
            row = self._row.get(token)
            if row is None or token in self._failed or row // lay.shard_size not in self._commits:
                continue
            wanted.append((row, i))
        wanted.sort()  # file order: consecutive reads of one shard help the kernel's read-ahead
        flat = memoryview(hidden.reshape(b, -1)).cast("B") if b else None
        per_sample = lay.sample_bytes()
        for row, i in wanted:
            shard, local = divmod(row, lay.shard_size)
            sh = self._shard(shard)
            offset = sh.index.offsets[local]
            if offset == np.iinfo(np.uint64).max:
                raise CacheError(self._damaged(shard, f"sample row {row} was never written"))
            pread_into(
                sh.fd, flat[i * per_sample : (i + 1) * per_sample], int(offset), where=self._where(shard)
            )
            length[i] = sh.length[local]
            present[i] = True
        hidden[~present] = 0
        if lay.dtype == "bfloat16":
            hidden = bf16_bits_to_float32(hidden)
        return LatentBatch(hidden=hidden, length=length, present=present)

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1].fd)

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if os.getpid() == getattr(self, "_pid", None):
            self.close()

    def __getstate__(self) -> dict:
        # Spawned workers re-open the files themselves.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    # ---- helpers --------------------------------------------------------------------------------------

    def _where(self, shard: int) -> str:
        return str(self.root / self._commits[shard].files[HIDDEN].path)

    def _damaged(self, shard: int, why: str) -> str:
        return (
            f"shard {shard} of cache {self.root} is damaged ({why}); run `netroller cache verify {self.root}` "
            "and re-run the same harvest to repair it"
        )

    def _shard(self, shard: int) -> _OpenShard:
        if os.getpid() != self._pid:
            # Forked: the inherited descriptors work for pread, but keep this process's set its own.
            self._open = OrderedDict()
            self._pid = os.getpid()
        sh = self._open.get(shard)
        if sh is not None:
            self._open.move_to_end(shard)
            return sh
        record = self._commits[shard]
        hidden_path = self.root / record.files[HIDDEN].path
        try:
            fd = os.open(hidden_path, os.O_RDONLY)
        except OSError as err:
            raise CacheError(self._damaged(shard, f"cannot open {hidden_path}: {err}")) from err
        try:
            size = os.fstat(fd).st_size
            if size != record.files[HIDDEN].nbytes:
                raise CacheError(f"{hidden_path} has {size} bytes, committed {record.files[HIDDEN].nbytes}")
            index = ShardIndex.read(fd, size, self._specs[HIDDEN], where=str(hidden_path))
            length = self._read_lengths(record)
        except (CacheError, OSError) as err:
            os.close(fd)
            raise CacheError(self._damaged(shard, str(err))) from err
        except BaseException:
            os.close(fd)
            raise
        sh = _OpenShard(fd=fd, index=index, length=length)
        self._open[shard] = sh
        if len(self._open) > MAX_OPEN_SHARDS:
            os.close(self._open.popitem(last=False)[1].fd)
        return sh

    def _read_lengths(self, record: CommitRecord) -> np.ndarray:
        path = self.root / record.files[LENGTH].path
        spec = self._specs[LENGTH]
        fd = os.open(path, os.O_RDONLY)
        try:
            index = ShardIndex.read(fd, os.fstat(fd).st_size, spec, where=str(path))
            return read_inner_chunk(fd, index, 0, spec, where=str(path))
        finally:
            os.close(fd)
