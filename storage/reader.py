"""CacheReader: random batches of latents by sample token, for training.

Each sample of `hidden` is one uncompressed inner chunk of its shard file at an offset given by the shard's
index (see `shard_format`). The reader maps a shard's `hidden` file read-only the first time a batch touches
it and keeps it mapped, with its index and lengths, so a batch is gathered as a numpy memmap gathers: one
memcpy per sample from the page cache, no system call and no index read per sample. Every sample returned
is checked against the crc32c stored behind its bytes (on the copy, so what is checked is what is returned);
a mismatch is a CacheError naming the cache, shard, sample and the command that repairs it.

A row is served only if its shard has a valid commit record and the sample did not fail; every other row
comes back as zeros with `present=False`, never as zarr fill values posing as data.

A shard can be rewritten while a reader has it mapped (a re-run harvest repairing it). The writer withdraws
the commit, then replaces the files: new inodes, so an old map keeps seeing the old, whole bytes, never a
torn mix, and since the map keeps the old inode alive its number is not reused. Each batch stats every shard
file it touches (one call per shard, not per sample); a file replaced or changed (size, mtime, ctime) since
it was mapped is dropped and validated again from its commit record, as at first: no record (a rewrite
under way) makes its rows absent, a new record maps the new file, a record the file does not match is a
CacheError (damage). A file truncated in place under a live map between that stat and the copy would still
fault (SIGBUS, as with any memmap); the writer never does that, it replaces files.
"""

from __future__ import annotations

import mmap
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netroller.errors import CacheError
from netroller.storage import commits
from netroller.storage.manifest import read_manifest
from netroller.storage.meta import read_meta
from netroller.storage.schema import (
    COMMITS_DIR,
    HIDDEN,
    LENGTH,
    CacheKey,
    CacheLayout,
    CommitRecord,
    LatentKey,
)
from netroller.storage.shard_format import (
    MAX_UINT64,
    ShardIndex,
    array_specs,
    bf16_bits_to_float32,
    check_array_metadata,
    crc32c,
    index_nbytes,
    read_inner_chunk,
)

# Shards kept mapped per reader (least recently used dropped first). A map holds no file descriptor, so this
# is bounded by address space and vm.max_map_count (65530 by default), not by the fd limit.
MAX_MAPPED_SHARDS = 4096
# Attempts to map a shard whose commit record changes while its files are opened (a rewrite racing us).
_MAP_ATTEMPTS = 3
# File times tick at the kernel's coarse clock (a few ms): a commits folder whose mtime is older than this
# gets a later mtime from any entry added, removed or renamed in it, so an unchanged mtime proves no change.
SETTLED_NS = 200_000_000
# Every mapped shard file is stat-ed again at least this often when batches touch it, so that a file changed
# behind the writer's back (damaged, truncated) is dropped and validated again instead of served from the map.
RECHECK_NS = 1_000_000_000

_Identity = tuple[int, int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _path_identity(path: str | Path) -> _Identity | None:
    try:
        return _identity(os.stat(path))
    except FileNotFoundError:
        return None


@dataclass
class LatentBatch:
    """Latents of a batch of samples, in the order asked for."""

    hidden: np.ndarray  # [B, L, T, H] float16 (float16 caches) or float32 (float32 and bfloat16 caches)
    length: np.ndarray  # [B] int64: valid positions (0 where not present)
    present: np.ndarray  # [B] bool: False for unknown, uncommitted or failed samples (hidden zeros)


@dataclass
class _MappedShard:
    """A committed shard's `hidden` file mapped read-only, with what was checked when it was mapped."""

    record: CommitRecord
    path: str  # the `hidden` shard file
    identity: _Identity  # of that file when it was mapped (a changed identity means: validate again)
    commit: str  # the commit record file
    checked_ns: int  # time.monotonic_ns() when the files were last found unchanged
    samples: list[memoryview | None]  # per local row: its bytes, a read-only view of the map (the views
    # keep the map alive); None for the samples the record lists as failed
    crcs: list[int]  # per local row: the crc32c zarr stored behind its bytes (0 for failed samples)
    lengths: list[int]  # per local row


class CacheReader:
    """Read-only view of a cache; safe to use from forked DataLoader workers (maps are inherited read-only)."""

    def __init__(self, root: str | Path, *, expect: LatentKey | None = None, verify: bool = True):
        """Open the cache at `root`; CacheKeyMismatchError if its latents are not those `expect` was recorded
        for (`LatentKey.check`), CacheError naming the file if the cache is malformed. `verify=False` skips
        the per-sample checksum (for measuring its cost; nothing else should turn it off)."""
        self.root = Path(root)
        self.verify = verify
        self._left_out: frozenset[str] = frozenset()
        meta = read_meta(self.root)
        self.key: CacheKey = meta.key
        self.layout: CacheLayout = meta.layout
        if expect is not None:
            expect.check(self.key.latent_key(), where=f"cache {self.root}")
        check_array_metadata(self.root, self.layout)
        manifest = read_manifest(self.root, samples=self.layout.samples, shard_size=self.layout.shard_size)
        self.tokens: list[str] = [r.sample_token for r in manifest]  # per row
        rows: dict[str, list[int]] = {}
        for i, t in enumerate(self.tokens):
            rows.setdefault(t, []).append(i)
        self._rows = {t: tuple(r) for t, r in rows.items()}  # token -> its rows, question 0 first
        self._categories = {t: tuple(manifest[i].category for i in r) for t, r in self._rows.items()}
        size = self.layout.shard_size
        # token -> (shard, local row) of each of its questions
        self._where = {t: tuple(divmod(i, size) for i in r) for t, r in self._rows.items()}
        self._specs = array_specs(self.layout)
        self._maps: OrderedDict[int, _MappedShard] = OrderedDict()
        self._commits_dir = str(self.root / COMMITS_DIR)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the commit records (a harvest may have committed more shards since)."""
        self._commits_seen = self._commits_state()  # before the scan: a change during it shows next batch
        valid, _, _ = commits.scan_commits(self.root, self.layout)
        self._commits: dict[int, CommitRecord] = valid
        self._failed: dict[str, str] = {t: r for rec in valid.values() for t, r in rec.failures}
        for shard in [s for s, sh in self._maps.items() if valid.get(s) != sh.record]:
            del self._maps[shard]

    def __len__(self) -> int:
        return self.layout.samples

    def __contains__(self, token: object) -> bool:
        """The sample has latents: its question 0 lies in a committed shard, and it neither failed in the
        harvest nor was left out."""
        rows = self._rows.get(token) if isinstance(token, str) else None
        return (
            rows is not None
            and rows[0] // self.layout.shard_size in self._commits
            and token not in self._failed
            and token not in self._left_out
        )

    def categories(self, token: str) -> tuple[str, ...]:
        """The DriveLM category of each of the sample's questions (its rows), question 0 first; () for a
        token the cache does not hold."""
        return self._categories.get(token, ())

    def failures(self) -> list[tuple[str, str]]:
        """(sample_token, reason) of every failed sample in a committed shard, in row order."""
        return sorted(self._failed.items(), key=lambda tr: self._rows[tr[0]][0])

    @property
    def committed_shards(self) -> list[int]:
        return sorted(self._commits)

    def read(self, tokens: Sequence[str], questions: Sequence[int] | None = None) -> LatentBatch:
        """Latents of `tokens` (any order, repeats allowed), each asked its question `questions[i]` (default:
        question 0); a question the sample was not asked reads as absent."""
        lay = self.layout
        b = len(tokens)
        nbytes = lay.sample_bytes()
        # np.empty, not zeros: zeroing 16 MiB first costs as much as the reads; absent rows are zeroed below.
        hidden = np.empty((b, lay.layers, lay.tokens, lay.hidden_size), dtype=lay.storage_dtype)
        out = memoryview(hidden.reshape(-1).view(np.uint8))  # memoryview copies: the least work per sample
        strict = self._check_commits()
        now = time.monotonic_ns()
        where, committed, verify, left_out = self._where, self._commits, self.verify, self._left_out
        shards: dict[
            int, _MappedShard | None
        ] = {}  # looked up once per batch; None: not committed (any more)
        got: list[int] = []
        got_length: list[int] = []
        for i, token in enumerate(tokens):
            rows = where.get(token)
            q = 0 if questions is None else questions[i]
            if rows is None or not 0 <= q < len(rows) or (left_out and token in left_out):
                continue
            shard, local = rows[q]
            try:
                sh = shards[shard]
            except KeyError:
                sh = shards[shard] = self._mapped(shard, strict, now) if shard in committed else None
            if sh is None:
                continue
            sample = sh.samples[local]
            if sample is not None:  # None: the sample failed in the harvest
                dst = out[i * nbytes : (i + 1) * nbytes]
                dst[:] = sample  # one memcpy from the mapped page cache
                # Checked on the copy, while it is still in the CPU's cache (a crc32c of the map would read
                # memory a second time): the bytes returned are the bytes checked, even if the file changes.
                if verify and crc32c(dst) != sh.crcs[local]:
                    raise CacheError(self._damaged_sample(shard, local, token))
                got.append(i)
                got_length.append(sh.lengths[local])
        present = np.zeros(b, dtype=bool)
        length = np.zeros(b, dtype=np.int64)
        present[got] = True
        length[got] = got_length
        if len(got) < b:
            hidden[~present] = 0
        if lay.dtype == "bfloat16":
            hidden = bf16_bits_to_float32(hidden)
        return LatentBatch(hidden=hidden, length=length, present=present)

    def damaged_samples(self) -> list[str]:
        """Tokens of the committed samples whose bytes do not match their checksum, in row order (reads every
        committed sample once; a shard whose files are damaged beyond that is still a CacheError)."""
        damaged = []
        now = time.monotonic_ns()
        for shard in self.committed_shards:
            sh = self._mapped(shard, True, now)
            if sh is None:
                continue
            start = self.layout.shard_rows(shard).start
            for local, sample in enumerate(sh.samples):
                if sample is not None and crc32c(sample) != sh.crcs[local]:
                    damaged.append(self.tokens[start + local])
        return list(dict.fromkeys(damaged))  # a sample with several damaged questions once

    def leave_out(self, tokens: Sequence[str]) -> None:
        """Serve `tokens` as absent (present=False) from now on, e.g. the damaged samples under --skip-damaged."""
        self._left_out = self._left_out | frozenset(tokens)

    @property
    def left_out(self) -> frozenset[str]:
        """Tokens `leave_out` made absent."""
        return self._left_out

    def close(self) -> None:
        """Drop every map (the memory is unmapped once no view of it is left)."""
        self._maps.clear()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # Maps cannot be pickled: a spawned worker maps the files itself.
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        return state

    # ---- helpers --------------------------------------------------------------------------------------

    def _damaged(self, shard: int, why: str) -> str:
        return (
            f"shard {shard} of cache {self.root} is damaged ({why}); run `netroller cache verify {self.root}` "
            "and re-run the same harvest (without --no-verify) to repair it"
        )

    def _damaged_sample(self, shard: int, local: int, token: str) -> str:
        row = self.layout.shard_rows(shard).start + local
        return (
            f"sample {token} (row {row}) in shard {shard} of cache {self.root}: its bytes do not match their "
            f"checksum (damaged data); run `netroller cache verify {self.root}` and re-run the same harvest "
            "(without --no-verify) to recompute the shard"
        )

    def _commits_state(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._commits_dir)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def _check_commits(self) -> bool:
        """Once per batch, one stat of the commits folder. The writer withdraws a shard's record before it
        touches the shard's files, so while the folder is unchanged no mapped file was replaced. When it
        changed, every mapped shard is checked now; True while its mtime is too recent to prove the next
        change (see SETTLED_NS): then every shard the batch touches is checked as well."""
        state = self._commits_state()
        if state != self._commits_seen:
            self._commits_seen = state
            for shard, sh in list(self._maps.items()):
                if not self._unchanged(sh):
                    del self._maps[shard]  # validated again from its record when a batch next touches it
        return state is None or time.time_ns() - state[1] < SETTLED_NS

    def _unchanged(self, sh: _MappedShard) -> bool:
        """The shard's record is still there and its file is the one mapped, unchanged."""
        return os.path.exists(sh.commit) and _path_identity(sh.path) == sh.identity

    def _mapped(self, shard: int, check: bool, now: int) -> _MappedShard | None:
        """The shard's map, validated again first if its files may have changed since it was mapped; None
        when the shard is no longer committed."""
        sh = self._maps.get(shard)
        if sh is not None:
            if not check and now - sh.checked_ns < RECHECK_NS:
                return sh
            if self._unchanged(sh):
                sh.checked_ns = now
                self._maps.move_to_end(shard)
                return sh
            del self._maps[shard]  # replaced or changed since it was mapped: never serve the old bytes
        sh = self._map(shard)
        if sh is None:
            self._forget(shard)
            return None
        self._set_record(shard, sh.record)
        self._maps[shard] = sh
        if len(self._maps) > MAX_MAPPED_SHARDS:
            self._maps.popitem(last=False)
        return sh

    def _map(self, shard: int) -> _MappedShard | None:
        """Map the shard's files as its commit record (read again now) describes them; None if it has none.

        The record is read again once the files are open: the writer withdraws a record before it touches
        the files, and every record it writes differs (its commit time), so an unchanged record means the
        files opened are the ones it covers.
        """
        for _ in range(_MAP_ATTEMPTS):
            record = self._read_record(shard)
            if record is None:
                return None
            try:
                why = commits.problem(self.root, self.layout, shard, record, full=False)
                if why is not None:
                    raise CacheError(self._damaged(shard, why))
                sh = self._open_files(shard, record)
            except CacheError:
                if self._read_record(shard) != record:
                    continue  # what we saw was a rewrite under way
                raise
            if self._read_record(shard) == record:
                return sh
        return None  # rewritten again and again while we looked: absent until it settles

    def _read_record(self, shard: int) -> CommitRecord | None:
        try:
            return commits.read_commit(self.root, shard)
        except CacheError as err:  # records are renamed into place whole: a malformed one is damage
            raise CacheError(self._damaged(shard, str(err))) from err

    def _open_files(self, shard: int, record: CommitRecord) -> _MappedShard:
        path = self.root / record.files[HIDDEN].path
        spec = self._specs[HIDDEN]
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise CacheError(self._damaged(shard, f"cannot open {path}: {err}")) from err
        try:
            st = os.fstat(fd)
            if st.st_size != record.files[HIDDEN].nbytes:
                raise CacheError(f"{path} has {st.st_size} bytes, committed {record.files[HIDDEN].nbytes}")
            # The committed size includes the index, so the file is never empty here (mmap refuses those).
            data = memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
            raw_index = data[st.st_size - index_nbytes(spec) :].tobytes()
            index = ShardIndex.parse(raw_index, st.st_size, spec, where=str(path))
            length = self._read_lengths(record)
        except (CacheError, OSError, ValueError) as err:
            raise CacheError(self._damaged(shard, str(err))) from err
        finally:
            os.close(fd)  # the map stays valid without it
        rows = self.layout.shard_rows(shard)  # the last shard may hold fewer than S: its tail stays unwritten
        start = rows.start
        failed = {i - start for t, _ in record.failures for i in self._rows.get(t, ()) if i in rows}
        n = spec.inner_nbytes
        samples: list[memoryview | None] = []
        crcs: list[int] = []
        for local, offset in enumerate(index.offsets[: len(rows)]):
            if local in failed:
                samples.append(None)
                crcs.append(0)
            elif offset == MAX_UINT64:  # a committed shard has every sample written (failed ones as zeros)
                raise CacheError(self._damaged(shard, f"sample row {start + local} was never written"))
            else:
                samples.append(data[int(offset) : int(offset) + n])
                crcs.append(int.from_bytes(data[int(offset) + n : int(offset) + n + 4], "little"))
        return _MappedShard(
            record=record,
            path=str(path),
            identity=_identity(st),
            commit=str(commits.commit_path(self.root, shard)),
            checked_ns=time.monotonic_ns(),
            samples=samples,
            crcs=crcs,
            lengths=[int(x) for x in length],
        )

    def _read_lengths(self, record: CommitRecord) -> np.ndarray:
        path = self.root / record.files[LENGTH].path
        spec = self._specs[LENGTH]
        fd = os.open(path, os.O_RDONLY)
        try:
            index = ShardIndex.read(fd, os.fstat(fd).st_size, spec, where=str(path))
            return read_inner_chunk(fd, index, 0, spec, where=str(path))
        finally:
            os.close(fd)

    def _set_record(self, shard: int, record: CommitRecord) -> None:
        """Make `record` the shard's commit record (its failures replace the old record's)."""
        if self._commits.get(shard) == record:
            return
        self._forget(shard)
        self._commits[shard] = record
        self._failed.update(record.failures)

    def _forget(self, shard: int) -> None:
        """The shard is no longer committed: its rows read as absent until a refresh finds a new commit."""
        old = self._commits.pop(shard, None)
        if old is not None:
            for token, _ in old.failures:
                self._failed.pop(token, None)
        self._maps.pop(shard, None)
