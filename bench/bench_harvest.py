"""Harvest benchmark on the tiny GM: Ray overhead, 2-worker scaling, cost of T, memory and bytes per sample.

    python -m netroller.bench.run harvest

Figures (steady state: Ray start and model load are timed separately and excluded; the first shard of
every run is a warm-up, not timed):
- bare_samples_per_s: one process, no Ray, no writes: load 6 images, preprocess, generate.
- harvest_1w_samples_per_s / harvest_2w_samples_per_s: the harvest's Ray path with 1 / 2 actors (one pool
  of 2 actors; the 1-worker run dispatches to the first of them only).
- harvest_overhead_ratio = bare / 1 worker (goal <= 1.10); harvest_scaling_2w = 2 workers / 1 (goal >= 1.5):
  each computed per round, the three runs taking turns in an order that changes by round (`rounds.order`),
  and reported as the median over the rounds with its min and max.
- Every process (bare loop, actors, in-process sweep) computes on one torch thread, as each actor does.
- seconds_per_sample_T{1,8,32}: in-process harvest cost per sample for T = 1, 8, 32 (mean length reported:
  the random GM may stop early at EOS).
- peak_rss_mb_per_worker, bytes_per_sample (hidden states on disk, fp16).
- batch_{1,4,16}_samples_per_s: in-process capture throughput (T = 8, generated, early stopping) at batch
  sizes 1, 4, 16 over the same samples, the three taking turns per round; batch_{4,16}_speedup = batch 1's
  time / theirs, median with min and max.
- teacher_forced_T192_s_per_sample / generated_T192_s_per_sample: one sample's capture at T = 192, read from
  a 191-token answer in one forward pass, or generated token by token (EOS suppressed, so all 192
  positions), taking turns per round; bytes_per_sample_T192 is the same for both (the layout is [L, T, H]).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from netroller.bench.rounds import check_rounds, interleaved, per_round, spread

T_SWEEP = (1, 8, 32)
BATCH_SWEEP = (1, 4, 16)
BATCH_TOKENS = 8
LONG_T = 192
WORKERS = 2  # the pool: the 2-worker run uses both actors, the 1-worker run the first


@dataclass(frozen=True, kw_only=True)
class HarvestBench:
    """Sizes of the harvest benchmark (`full()` is the reported run, `smoke()` the test's)."""

    samples: int = 64
    """Samples of the index harvested by each run."""
    shard_size: int = 8
    """Samples per shard (one Ray task each)."""
    tokens: int = 1
    """T of the throughput runs."""
    rounds: int = 7
    """Rounds of the three throughput runs; every ratio is their median (with min and max)."""
    t_sweep_samples: int = 12
    """Samples of each in-process run of the T sweep."""
    index: Literal["synth", "jpegs"] = "synth"
    """The throughput runs' samples: the synthetic nuScenes through `prepare`, or bare random JPEGs."""
    batch_samples: int = 32
    """Samples of each run of the batch sweep (a multiple of 16)."""
    long_samples: int = 2
    """Samples of each run of the T = 192 teacher-forced / generated comparison."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "index":
                check_rounds(f"HarvestBench.{f.name}", getattr(self, f.name))
        if self.index not in ("synth", "jpegs"):
            raise ValueError(f"HarvestBench.index must be 'synth' or 'jpegs', got {self.index!r}")
        if self.samples <= WORKERS * self.shard_size:
            raise ValueError(
                f"HarvestBench.samples must be more than {WORKERS} shards of {self.shard_size} (the warm-up "
                f"shards, one per worker), got {self.samples}"
            )
        if self.t_sweep_samples <= self.shard_size:
            raise ValueError(
                f"HarvestBench.t_sweep_samples must be more than one shard of {self.shard_size} (the warm-up), "
                f"got {self.t_sweep_samples}"
            )


def full() -> HarvestBench:
    return HarvestBench()


def smoke() -> HarvestBench:
    """Seconds once Ray is up and the actors have loaded: 6 random-JPEG samples in shards of 2, 2 rounds."""
    return HarvestBench(
        samples=6, shard_size=2, rounds=2, t_sweep_samples=4, index="jpegs", batch_samples=16, long_samples=1
    )


def _own_index(root: Path, samples: int) -> Path:
    """A synthetic index of random 160x90 JPEG cameras (no scenes, maps or annotations)."""
    from netroller.data.index import CAMERAS, IndexMeta, bare_record, write_index

    rng = np.random.default_rng(0)
    dataroot = root / "nuscenes"
    records = []
    for i in range(samples):
        token = f"bench{i:04d}"
        paths = tuple(f"samples/{cam}/{token}.jpg" for cam in CAMERAS)
        for rel in paths:
            (dataroot / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(dataroot / rel)
        records.append(
            bare_record(
                sample_token=token,
                scene_token=f"scene{i // 16}",
                frame_index=i % 16,
                cam_paths=paths,
                image_size=(160, 90),
            )
        )
    return write_index(records, root / "index.parquet", IndexMeta(dataroot=str(dataroot), version="bench"))


def _index(root: Path, samples: int, kind: str) -> tuple[Path, str]:
    """The synthetic nuScenes set through `prepare`, or our own random-JPEG index."""
    if kind == "jpegs":
        return _own_index(root, samples), "generated JPEGs"
    from netroller.data.synth import SynthConfig, generate
    from netroller.stages.prepare import PrepareConfig, prepare

    per_scene = 8
    synth = generate(
        SynthConfig(out=root / "nuscenes", scenes=-(-samples // per_scene), samples_per_scene=per_scene)
    )
    return prepare(PrepareConfig(dataroot=synth, version="v1.0-mini", out=root / "index.parquet")), "synth"


class _BareLoop:
    """Load + preprocess + generate in this process: no Ray, no writes; the samples the Ray runs time."""

    def __init__(self, plan, size: HarvestBench) -> None:
        self.plan = plan
        self.capturer = plan.capture.capturer()
        self.records = plan.records[WORKERS * size.shard_size :]
        self._pass(plan.records[: size.shard_size])  # warm-up

    def _pass(self, records) -> None:
        from netroller.data.cameras import load_camera_images
        from netroller.models.gm.prompts import DEFAULT_TEMPLATE

        for rec in records:
            images = load_camera_images(rec, self.plan.dataroot)
            self.capturer.capture(images, DEFAULT_TEMPLATE, key=rec.sample_token)

    def seconds(self) -> float:
        start = time.perf_counter()
        self._pass(self.records)
        return time.perf_counter() - start


class _RayPool:
    """The harvest's Ray path: WORKERS actors writing one cache, GMs loaded and warmed up once."""

    def __init__(self, plan, root: Path, size: HarvestBench) -> None:
        from netroller.distributed.ray_harvest import dispatch, start_actors
        from netroller.stages.harvest import ShardJob
        from netroller.storage.writer import CacheWriter

        self._dispatch = dispatch
        self.writer = CacheWriter.create(root, plan.key, plan.manifest, size.shard_size, overwrite=True)
        work = [(s, [plan.rows[i] for i in self.writer.shard_rows(s)]) for s in range(self.writer.num_shards)]
        job = ShardJob(root=root, capture=plan.capture, dataroot=plan.dataroot, batch_size=1)
        start = time.perf_counter()
        self.actors = start_actors(job.load, WORKERS, 0.0, None)
        self.model_load_s = time.perf_counter() - start
        dispatch(self.actors, work[:WORKERS], None, lambda n: None)  # warm-up: one shard per actor
        self.work = work[WORKERS:]
        self.timed = sum(len(recs) for _, recs in self.work)

    def seconds(self, workers: int) -> float:
        """Harvest the timed shards with the first `workers` actors. Every pass rewrites the same shards
        (write_shard withdraws the commit, rewrites, commits again)."""
        start = time.perf_counter()
        self._dispatch(self.actors[:workers], self.work, None, lambda n: None)
        return time.perf_counter() - start

    def close(self) -> float:
        """Kill the actors; returns their peak RSS in MiB."""
        import ray

        rss = ray.get([a.peak_rss_bytes.remote() for a in self.actors])
        for a in self.actors:
            ray.kill(a)
        self.writer.finalize()
        return max(rss) / 2**20


def _t_sweep(index: Path, gm_path: Path, tmp: Path, size: HarvestBench) -> dict:
    """In-process harvest seconds per sample (capture + shard writes) for each T, after a warm-up shard."""
    from netroller.stages.harvest import HarvestConfig, harvest_shard, plan_harvest
    from netroller.storage.reader import CacheReader
    from netroller.storage.writer import CacheWriter

    out: dict = {}
    for t in T_SWEEP:
        cfg = HarvestConfig(
            index=index,
            out=tmp / f"cache-T{t}",
            model=str(gm_path),
            tokens=t,
            shard_size=size.shard_size,
            workers=0,
        )
        plan = plan_harvest(cfg)
        writer = CacheWriter.create(cfg.out, plan.key, plan.manifest, size.shard_size)
        capturer = plan.capture.capturer()
        with writer.lock():
            for shard in range(writer.num_shards):
                if shard == 1:
                    start = time.perf_counter()
                recs = [plan.rows[i] for i in writer.shard_rows(shard)]
                harvest_shard(cfg.out, shard, recs, capturer, plan.dataroot)
            elapsed = time.perf_counter() - start
        lengths = CacheReader(cfg.out).read([m.sample_token for m in plan.manifest]).length.tolist()
        timed = len(plan.records) - len(writer.shard_rows(0))
        out[f"seconds_per_sample_T{t}"] = round(elapsed / timed, 4)
        out[f"mean_length_T{t}"] = round(float(np.mean(lengths)), 2)
    return out


def _queries(index: Path, samples: int, answer: str | None = None) -> list:
    from netroller.data.cameras import load_camera_images
    from netroller.data.index import read_index
    from netroller.models.gm.capture import Query
    from netroller.models.gm.prompts import DEFAULT_TEMPLATE

    idx = read_index(index)
    return [
        Query(load_camera_images(rec, idx.dataroot()), DEFAULT_TEMPLATE, answer, rec.sample_token)
        for rec in idx.records[:samples]
    ]


def _batch_sweep(index: Path, gm_path: Path, size: HarvestBench) -> dict:
    """Capture throughput at each batch size over the same samples, interleaved rounds."""
    from netroller.data.index import CAMERAS
    from netroller.models.gm.capture import LatentCapturer
    from netroller.models.gm.loader import load_gm

    capturer = LatentCapturer(
        load_gm(gm_path, fingerprint=False), layers="all", tokens=BATCH_TOKENS, cameras=CAMERAS
    )
    queries = _queries(index, size.batch_samples)
    capturer.capture_batch(queries[:4])  # warm-up

    def timed(batch: int):
        def go() -> float:
            start = time.perf_counter()
            for i in range(0, len(queries), batch):
                capturer.capture_batch(queries[i : i + batch])
            return time.perf_counter() - start

        return go

    seconds = interleaved({f"b{b}": timed(b) for b in BATCH_SWEEP}, size.rounds)
    out: dict = {"batch_tokens": BATCH_TOKENS, "batch_samples": len(queries)}
    for b in BATCH_SWEEP:
        out[f"batch_{b}_samples_per_s"] = round(
            float(np.median([len(queries) / t for t in seconds[f"b{b}"]])), 2
        )
    for b in BATCH_SWEEP[1:]:
        out |= spread(f"batch_{b}_speedup", per_round(seconds["b1"], seconds[f"b{b}"]))
    return out


def _teacher_forced_vs_generated(index: Path, gm_path: Path, size: HarvestBench) -> dict:
    """Seconds per sample at T = 192: one teacher-forced pass over a long answer vs 191 generation steps."""
    from netroller.data.index import CAMERAS
    from netroller.models.gm.capture import LatentCapturer
    from netroller.models.gm.loader import load_gm

    gm = load_gm(gm_path, fingerprint=False)
    answer = " ".join(["The ego vehicle keeps its lane and slows down for the pedestrian ahead."] * 24)
    if len(gm.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]) < LONG_T - 1:
        raise RuntimeError(f"the bench's answer is shorter than {LONG_T - 1} tokens")
    queries = _queries(index, size.long_samples, answer)
    forced = LatentCapturer(gm, layers="all", tokens=LONG_T, cameras=CAMERAS, latents="teacher-forced")
    generated = LatentCapturer(gm, layers="all", tokens=LONG_T, cameras=CAMERAS, stop_at_eos=False)
    lengths: dict[str, list[int]] = {"tf": [], "gen": []}

    def timed(name: str, capturer):
        def go() -> float:
            start = time.perf_counter()
            lengths[name] = [capturer.capture_batch([q])[0].length for q in queries]
            return time.perf_counter() - start

        return go

    seconds = interleaved({"tf": timed("tf", forced), "gen": timed("gen", generated)}, size.rounds)
    n = len(queries)
    return {
        "teacher_forced_T192_s_per_sample": round(float(np.median(seconds["tf"])) / n, 4),
        "generated_T192_s_per_sample": round(float(np.median(seconds["gen"])) / n, 4),
        **spread("generated_over_teacher_forced_T192", per_round(seconds["gen"], seconds["tf"])),
        "lengths_T192": {"teacher_forced": lengths["tf"], "generated": lengths["gen"]},
        "bytes_per_sample_T192": gm.num_layers * LONG_T * gm.hidden_size * 2,
    }


def run(size: HarvestBench | None = None) -> dict:
    import ray
    import torch

    from netroller.distributed.ray_harvest import connect
    from netroller.models.gm.tiny import build_tiny_gm
    from netroller.stages.harvest import HarvestConfig, plan_harvest
    from netroller.storage.verify import cache_info

    size = size or full()
    # Every process computes on one thread (as each Ray actor does), so that the ratios compare like with like.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-harvest-") as tmp_s:
            tmp = Path(tmp_s)
            index, source = _index(tmp / "data", size.samples, size.index)
            gm_path = build_tiny_gm(tmp / "gm")
            cfg = HarvestConfig(
                index=index,
                out=tmp / "cache",
                model=str(gm_path),
                tokens=size.tokens,
                shard_size=size.shard_size,
                progress=False,
            )
            plan = plan_harvest(cfg)
            records = plan.records
            bare = _BareLoop(plan, size)
            driver_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

            start = time.perf_counter()
            started = connect(None, WORKERS)
            ray_start_s = time.perf_counter() - start
            try:
                pool = _RayPool(plan, tmp / "cache-ray", size)
                with pool.writer.lock():
                    seconds = interleaved(
                        {
                            "bare": bare.seconds,
                            "1w": lambda: pool.seconds(1),
                            "2w": lambda: pool.seconds(WORKERS),
                        },
                        size.rounds,
                    )
                rss = pool.close()
            finally:
                if started:
                    ray.shutdown()
            info = cache_info(tmp / "cache-ray")
            bytes_on_disk = int(info["bytes_on_disk"])

            sweep = _t_sweep(_own_index(tmp / "sweep", size.t_sweep_samples), gm_path, tmp, size)
            own = _own_index(tmp / "batch", max(size.batch_samples, size.long_samples))
            batches = _batch_sweep(own, gm_path, size)
            long = _teacher_forced_vs_generated(own, gm_path, size)
    finally:
        torch.set_num_threads(threads)
    timed = pool.timed
    return {
        "index": source,
        "torch_threads_per_process": 1,
        "samples": len(records),
        "timed_samples": timed,
        "shard_size": size.shard_size,
        "tokens": size.tokens,
        "rounds": size.rounds,
        "layers": len(plan.capture.layers),
        "hidden_size": plan.key.hidden_size,
        **{
            f"{name}_samples_per_s": round(float(np.median([timed / s for s in seconds[key]])), 2)
            for name, key in (("bare", "bare"), ("harvest_1w", "1w"), ("harvest_2w", "2w"))
        },
        # same samples in every run: a ratio of rates is the inverse ratio of times
        **spread("harvest_overhead_ratio", per_round(seconds["1w"], seconds["bare"])),
        **spread("harvest_scaling_2w", per_round(seconds["1w"], seconds["2w"])),
        "ray_start_s": round(ray_start_s, 2),
        "model_load_s": round(pool.model_load_s, 2),
        "peak_rss_mb_per_worker": round(rss, 1),
        "peak_rss_mb_driver": round(driver_rss / 2**20, 1),
        "bytes_per_sample": info["bytes_per_sample"],
        "bytes_on_disk_per_sample": round(bytes_on_disk / len(records), 1) if bytes_on_disk else None,
        **sweep,
        **batches,
        **long,
        "cpus": os.cpu_count(),
    }
