"""Cache read speed: CacheReader vs a numpy memmap of the same bytes vs zarr-python vs gzip pickles.

Builds a paper-size cache (L=32, T=1, H=4096 float16: 256 KiB per sample) with the real CacheWriter in a
temp dir, plus the same latents as one .npy file and as one gzip pickle per sample, warms the page cache for
all of them, then reads random batches of 64 samples, all methods side by side, rotating their order every
round so no method always runs first.

    python -m netroller.bench.run reader
"""

from __future__ import annotations

import gzip
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from netroller.storage.reader import CacheReader
from netroller.storage.schema import CacheKey, ManifestRow
from netroller.storage.writer import CacheWriter

SAMPLES = 768
SHARD = 64
LAYERS, TOKENS, HIDDEN = 32, 1, 4096
BATCH = 64
ROUNDS = 24


def _key() -> CacheKey:
    return CacheKey(
        model="bench",
        model_hash="bench",
        processor_hash="bench",
        prompt_hash="bench",
        layers=tuple(range(LAYERS)),
        num_model_layers=LAYERS,
        tokens=TOKENS,
        hidden_size=HIDDEN,
        dtype="float16",
        dataset_version="bench",
        splits=("train",),
        index_hash="bench",
        code_version="bench",
    )


def _build(tmp: Path) -> dict:
    manifest = [
        ManifestRow(sample_token=f"s{i:05d}", scene_token="bench", frame_index=i, timestamp=i)
        for i in range(SAMPLES)
    ]
    writer = CacheWriter.create(tmp / "cache", _key(), manifest, SHARD)
    memmap = np.lib.format.open_memmap(
        tmp / "latents.npy", mode="w+", dtype=np.float16, shape=(SAMPLES, LAYERS, TOKENS, HIDDEN)
    )
    (tmp / "pickles").mkdir()
    rng = np.random.default_rng(0)
    write_s = pickle_s = 0.0
    for shard in tqdm(range(writer.num_shards), desc="bench reader: building", unit="shard"):
        rows = writer.shard_rows(shard)
        hidden = rng.standard_normal((len(rows), LAYERS, TOKENS, HIDDEN), dtype=np.float32).astype(np.float16)
        start = time.perf_counter()
        writer.write_shard(shard, hidden, np.full(len(rows), TOKENS), np.full((len(rows), 1), -1), [])
        write_s += time.perf_counter() - start
        memmap[rows.start : rows.stop] = hidden
        start = time.perf_counter()
        for i, row in enumerate(rows):
            with gzip.open(tmp / "pickles" / f"{row:05d}.pkl.gz", "wb") as f:
                pickle.dump({"hidden": hidden[i], "length": TOKENS}, f, protocol=pickle.HIGHEST_PROTOCOL)
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


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_reader_") as d:
        tmp = Path(d)
        built = _build(tmp)
        _warm(tmp)
        reader = CacheReader(tmp / "cache")
        memmap = np.load(tmp / "latents.npy", mmap_mode="r")
        zarr_hidden = zarr.open_array(tmp / "cache" / "latents.zarr" / "hidden", mode="r")
        tokens = reader.tokens

        methods = {
            "cache_reader": lambda rows: reader.read([tokens[r] for r in rows]).hidden,
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
        check = rng.choice(SAMPLES, BATCH, replace=False)
        first = methods["memmap"](check)
        for name, fn in methods.items():  # every method returns the same bytes (and warms up)
            if not np.array_equal(fn(check), first):
                raise RuntimeError(f"bench reader: {name} returned other values than the memmap")
        times: dict[str, list[float]] = {name: [] for name in methods}
        names = list(methods)
        for round_ in tqdm(range(ROUNDS), desc="bench reader: reading", unit="round"):
            rows = rng.choice(SAMPLES, BATCH, replace=False)
            for k in range(len(names)):
                name = names[(round_ + k) % len(names)]
                start = time.perf_counter()
                methods[name](rows)
                times[name].append(time.perf_counter() - start)
        reader.close()

    sample_bytes = LAYERS * TOKENS * HIDDEN * 2
    batch_bytes = BATCH * sample_bytes
    gbps = {name: batch_bytes * len(t) / sum(t) / 1e9 for name, t in times.items()}
    return {
        "samples": SAMPLES,
        "shard_size": SHARD,
        "batch": BATCH,
        "rounds": ROUNDS,
        "bytes_per_sample": sample_bytes,
        "cache_reader_gbps": round(gbps["cache_reader"], 3),
        "memmap_gbps": round(gbps["memmap"], 3),
        "zarr_python_gbps": round(gbps["zarr_python"], 3),
        "gzip_pickle_gbps": round(gbps["gzip_pickle"], 3),
        "read_vs_memmap_ratio": round(gbps["cache_reader"] / gbps["memmap"], 3),
        "read_vs_pickle_ratio": round(gbps["cache_reader"] / gbps["gzip_pickle"], 3),
        "read_vs_zarr_python_ratio": round(gbps["cache_reader"] / gbps["zarr_python"], 3),
        "cache_reader_batch_ms_median": round(1e3 * statistics.median(times["cache_reader"]), 2),
        "memmap_batch_ms_median": round(1e3 * statistics.median(times["memmap"]), 2),
        "cache_write_gbps": round(SAMPLES * sample_bytes / built["write_s"] / 1e9, 3),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
