"""Cache read speed: CacheReader (checking every sample's crc32c, and with that check off) vs a numpy memmap
of the same bytes vs zarr-python vs gzip pickles.

Builds a paper-size cache (L=32, T=1, H=4096 float16: 256 KiB per sample) with the real CacheWriter in a
temp dir, plus the same latents as one .npy file and as one gzip pickle per sample, warms the page cache for
all of them, then reads random batches of 64 samples. Every round reads `batches_per_round` batches with
the reader, the reader without its per-sample checksum and the memmap, then `slow_batches_per_round` with the reader, zarr-python and the pickles, the
methods taking turns batch by batch in changing order (`rounds.order`). read_vs_memmap_ratio of a round is
the median over its batches of (memmap time / reader time) for the same rows read back to back
(read_vs_memmap_ratio_unverified: the same with the checksum off); the other
ratios of a round compare the methods' median batch times; each is reported as the median over the rounds
with its min and max.

    python -m netroller.bench.run reader
"""

from __future__ import annotations

import gzip
import pickle
import statistics
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from netroller.bench.rounds import check_rounds, order, per_round, spread
from netroller.storage.reader import CacheReader
from netroller.storage.schema import CacheKey, ManifestRow
from netroller.storage.writer import CacheWriter


@dataclass(frozen=True, kw_only=True)
class ReaderBench:
    """Sizes of the reader benchmark (`full()` is the paper-size run, `smoke()` the test's)."""

    samples: int = 768
    """Samples in the cache."""
    shard_size: int = 64
    """Samples per shard file."""
    layers: int = 32
    """L of each sample."""
    tokens: int = 1
    """T of each sample."""
    hidden: int = 4096
    """H of each sample (float16)."""
    batch: int = 64
    """Samples per random batch."""
    batches_per_round: int = 16
    """Batches the reader and the memmap each read per round (a method's figure for a round is its median
    batch time)."""
    slow_batches_per_round: int = 2
    """Batches the reader, zarr-python and the gzip pickles each read per round."""
    rounds: int = 20
    """Rounds; every ratio is their median (with min and max)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check_rounds(f"ReaderBench.{f.name}", getattr(self, f.name))
        if self.batch > self.samples:
            raise ValueError(f"ReaderBench.batch {self.batch} is more than the {self.samples} samples")


def full() -> ReaderBench:
    return ReaderBench()


def smoke() -> ReaderBench:
    """Seconds, not minutes: the same code path on a cache of 24 tiny samples."""
    return ReaderBench(
        samples=24,
        shard_size=4,
        layers=2,
        hidden=64,
        batch=8,
        batches_per_round=2,
        slow_batches_per_round=1,
        rounds=2,
    )


def _key(size: ReaderBench) -> CacheKey:
    return CacheKey(
        model="bench",
        model_hash="bench",
        processor_hash="bench",
        prompt_hash="bench",
        layers=tuple(range(size.layers)),
        num_model_layers=size.layers,
        tokens=size.tokens,
        hidden_size=size.hidden,
        dtype="float16",
        compute_dtype="float32",
        attn_implementation="sdpa",
        latents="generated",
        decode="greedy",
        questions="one",
        dataset_version="bench",
        splits=("train",),
        index_hash="bench",
        code_version="bench",
    )


def _build(tmp: Path, size: ReaderBench) -> dict:
    manifest = [
        ManifestRow(sample_token=f"s{i:05d}", scene_token="bench", frame_index=i, timestamp=i)
        for i in range(size.samples)
    ]
    writer = CacheWriter.create(tmp / "cache", _key(size), manifest, size.shard_size)
    shape = (size.layers, size.tokens, size.hidden)
    memmap = np.lib.format.open_memmap(
        tmp / "latents.npy", mode="w+", dtype=np.float16, shape=(size.samples, *shape)
    )
    (tmp / "pickles").mkdir()
    rng = np.random.default_rng(0)
    write_s = pickle_s = 0.0
    for shard in tqdm(range(writer.num_shards), desc="bench reader: building", unit="shard"):
        rows = writer.shard_rows(shard)
        hidden = rng.standard_normal((len(rows), *shape), dtype=np.float32).astype(np.float16)
        start = time.perf_counter()
        writer.write_shard(shard, hidden, np.full(len(rows), size.tokens), np.full((len(rows), 1), -1), [])
        write_s += time.perf_counter() - start
        memmap[rows.start : rows.stop] = hidden
        start = time.perf_counter()
        for i, row in enumerate(rows):
            with gzip.open(tmp / "pickles" / f"{row:05d}.pkl.gz", "wb") as f:
                pickle.dump({"hidden": hidden[i], "length": size.tokens}, f, protocol=pickle.HIGHEST_PROTOCOL)
        pickle_s += time.perf_counter() - start
    memmap.flush()
    del memmap
    return {"write_s": write_s, "pickle_write_s": pickle_s}


def _warm(root: Path) -> None:
    """Read every file once, so all methods are measured from a warm page cache."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(16 << 20):
                    pass


def _map_seconds(root: Path, shards: int, shard_size: int) -> float:
    """Mean time a fresh reader takes to map a shard (record check, map, index and lengths): the first
    batch that touches a shard pays it once."""
    reader = CacheReader(root)
    start = time.perf_counter()
    for shard in range(shards):
        reader.read([reader.tokens[shard * shard_size]])
    seconds = (time.perf_counter() - start) / shards
    reader.close()
    return seconds


def run(size: ReaderBench | None = None) -> dict:
    size = size or full()
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as d:
        tmp = Path(d)
        built = _build(tmp, size)
        _warm(tmp)
        reader = CacheReader(tmp / "cache")
        unverified = CacheReader(tmp / "cache", verify=False)
        memmap = np.load(tmp / "latents.npy", mmap_mode="r")
        zarr_hidden = zarr.open_array(tmp / "cache" / "latents.zarr" / "hidden", mode="r")
        tokens = reader.tokens

        methods = {
            "cache_reader": lambda rows: reader.read([tokens[r] for r in rows]).hidden,
            "cache_reader_unverified": lambda rows: unverified.read([tokens[r] for r in rows]).hidden,
            "memmap": lambda rows: np.ascontiguousarray(memmap[rows]),
            "zarr_python": lambda rows: np.stack([zarr_hidden[int(r)] for r in rows]),
            "gzip_pickle": lambda rows: np.stack(
                [
                    pickle.loads(gzip.decompress((tmp / "pickles" / f"{r:05d}.pkl.gz").read_bytes()))[
                        "hidden"
                    ]
                    for r in rows
                ]
            ),
        }
        rng = np.random.default_rng(1)
        check = rng.choice(size.samples, size.batch, replace=False)
        first = methods["memmap"](check)
        for name, fn in methods.items():  # every method returns the same bytes (and warms up)
            if not np.array_equal(fn(check), first):
                raise RuntimeError(f"bench reader: {name} returned other values than the memmap")
        # Two groups, each timed in its own batches so that one group's work does not tax the other's: the
        # reader beside the memmap (both ~1 ms a batch), and the reader beside the two slow formats (~50 ms a
        # batch, churning the caches and the allocator for whatever runs next). Per round and method, the
        # figure is the median of its batch times: a batch that other processes preempt (a time slice is
        # longer than a reader batch) does not decide the round.
        fast = ("cache_reader", "cache_reader_unverified", "memmap")
        slow = ("cache_reader", "zarr_python", "gzip_pickle")
        seconds: dict[str, dict[str, list[float]]] = {
            "fast": {n: [] for n in fast},
            "slow": {n: [] for n in slow},
        }
        batch_s: list[float] = []  # every fast-group batch of the reader
        memmap_ratio: list[float] = []  # per round: median over its batches of memmap time / reader time
        unverified_ratio: list[float] = []  # the same, for the reader without its per-sample checksum
        memmap_batch_s: list[float] = []
        k = 0
        for _ in tqdm(range(size.rounds), desc="bench reader: reading", unit="round"):
            for group, names, batches in (
                ("fast", fast, size.batches_per_round),
                ("slow", slow, size.slow_batches_per_round),
            ):
                spent: dict[str, list[float]] = {name: [] for name in names}
                for _ in range(batches):
                    rows = rng.choice(size.samples, size.batch, replace=False)
                    for name in order(names, k):
                        start = time.perf_counter()
                        methods[name](rows)
                        spent[name].append(time.perf_counter() - start)
                    k += 1
                for name in names:
                    seconds[group][name].append(statistics.median(spent[name]))
                if group == "fast":
                    batch_s.extend(spent["cache_reader"])
                    memmap_batch_s.extend(spent["memmap"])
                    # the same rows, read back to back: the pair shares whatever load the machine had then
                    pairs = zip(spent["memmap"], spent["cache_reader"], strict=True)
                    memmap_ratio.append(statistics.median(m / c for m, c in pairs))
                    pairs = zip(spent["memmap"], spent["cache_reader_unverified"], strict=True)
                    unverified_ratio.append(statistics.median(m / c for m, c in pairs))
        reader.close()
        unverified.close()
        map_s = _map_seconds(tmp / "cache", -(-size.samples // size.shard_size), size.shard_size)

    sample_bytes = size.layers * size.tokens * size.hidden * 2
    batch_bytes = size.batch * sample_bytes
    rounds_s = {**seconds["slow"], **seconds["fast"]}  # the reader's and memmap's from their own batches
    gbps = {name: statistics.median(batch_bytes / s / 1e9 for s in t) for name, t in rounds_s.items()}
    slow_s = seconds["slow"]
    return {
        "samples": size.samples,
        "shard_size": size.shard_size,
        "batch": size.batch,
        "batches_per_round": size.batches_per_round,
        "slow_batches_per_round": size.slow_batches_per_round,
        "rounds": size.rounds,
        "bytes_per_sample": sample_bytes,
        **{f"{name}_gbps": round(v, 3) for name, v in gbps.items()},
        # time ratios, memmap / reader etc.: the reader's throughput as a fraction of the other's
        **spread("read_vs_memmap_ratio", memmap_ratio),
        **spread("read_vs_memmap_ratio_unverified", unverified_ratio),
        **spread("read_vs_pickle_ratio", per_round(slow_s["gzip_pickle"], slow_s["cache_reader"])),
        **spread("read_vs_zarr_python_ratio", per_round(slow_s["zarr_python"], slow_s["cache_reader"])),
        "cache_reader_batch_ms_median": round(1e3 * statistics.median(batch_s), 3),
        "memmap_batch_ms_median": round(1e3 * statistics.median(memmap_batch_s), 3),
        "shard_map_ms_mean": round(1e3 * map_s, 3),
        "cache_write_gbps": round(size.samples * sample_bytes / built["write_s"] / 1e9, 3),
    }
