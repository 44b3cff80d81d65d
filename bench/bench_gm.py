"""GM benchmark on the tiny GM: build cost, model size, capture time per sample for T = 1, 8, 32.

    python -m netroller.bench.run gm

Inputs: 6 synthetic 480x270 camera frames per sample (numpy + PIL, no dataset), the default question.
Figures:
- build_s, params, weights_bytes, vocab, prompt_tokens (of which image_tokens): the tiny GM itself.
- preprocess_s: the processor alone (resize 6 frames, tokenize) per sample.
- capture_s_T{1,8,32}: per-sample capture time (preprocessing included) with EOS suppressed, so the full T
  is decoded; median over samples of the best of `rounds` interleaved rounds (the machine is shared: the
  best run is the least disturbed one).
- capture_eos_s_T{8,32} and mean_length_T{8,32}: mean over samples with early stopping, as a harvest runs.
- prefill_s and per_token_s: least-squares fit of capture_s_T = prefill_s + per_token_s * (T - 1); the split
  to scale to a 7B GM (prefill grows with prompt length x model size, each token with model size).
- peak_rss_mb (getrusage), rss_mb (psutil, at the end).
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from netroller.bench.rounds import check_rounds

T_SWEEP = (1, 8, 32)


@dataclass(frozen=True, kw_only=True)
class GMBench:
    """Sizes of the GM benchmark (`full()` is the reported run, `smoke()` the test's)."""

    samples: int = 4
    """Distinct image sets, timed after a warm-up (also the batch of the batched capture)."""
    repeats: int = 3
    """Runs of the processor and of the batched capture; the fastest counts."""
    rounds: int = 4
    """Rounds over every (T, sample) capture; the fastest run of each counts."""

    def __post_init__(self) -> None:
        for f in fields(self):
            check_rounds(f"GMBench.{f.name}", getattr(self, f.name))


def full() -> GMBench:
    return GMBench()


def smoke() -> GMBench:
    return GMBench(samples=1, repeats=1, rounds=1)


def _cameras(seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(6):
        img = np.empty((270, 480, 3), dtype=np.uint8)
        img[:135] = np.linspace(rng.integers(120, 200), 230, 135, dtype=np.uint8)[:, None, None]  # sky
        img[135:] = rng.integers(40, 90, 3)  # road
        for _ in range(5):  # vehicles
            y, x = int(rng.integers(120, 220)), int(rng.integers(0, 420))
            img[y : y + 40, x : x + 60] = rng.integers(0, 255, 3)
        frames.append(Image.fromarray(img))
    return frames


def _best_times(capturers: dict, inputs: list, question: str, rounds: int) -> tuple[dict, dict]:
    """Per (capturer key, sample): the best of `rounds` runs, and the length it kept.

    Rounds go over every capturer in turn, so a burst of load from other processes on this shared machine
    hits all of them alike instead of one T; the best run is the least disturbed one.
    """
    best: dict = {}
    lengths: dict = {}
    for _ in range(rounds):
        for key, capturer in capturers.items():
            for i, images in enumerate(inputs):
                start = time.perf_counter()
                lengths[key, i] = capturer.capture(images, question).length
                best[key, i] = min(best.get((key, i), float("inf")), time.perf_counter() - start)
    return best, lengths


def run(size: GMBench | None = None) -> dict:
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor  # noqa: F401  (build_s excludes import time)

    from netroller.data.index import CAMERAS
    from netroller.models.gm.capture import LatentCapturer
    from netroller.models.gm.loader import load_gm
    from netroller.models.gm.prompts import DEFAULT_TEMPLATE, render_prompt
    from netroller.models.gm.tiny import build_tiny_gm

    size = size or full()
    figures: dict = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = build_tiny_gm(Path(tmp) / "tiny", seed=0)
        figures["build_s"] = round(time.perf_counter() - start, 2)
        figures["weights_bytes"] = (folder / "model.safetensors").stat().st_size
        start = time.perf_counter()
        gm = load_gm(folder)
        figures["load_s"] = round(time.perf_counter() - start, 2)

    figures["params"] = sum(p.numel() for p in gm.model.parameters())
    figures["vocab"] = len(gm.processor.tokenizer)
    inputs = [_cameras(seed) for seed in range(size.samples)]
    prompt = render_prompt(gm.processor, DEFAULT_TEMPLATE, fmt="auto", cameras=CAMERAS)
    best = float("inf")
    for _ in range(size.repeats):
        start = time.perf_counter()
        batch = gm.processor(images=inputs[0], text=prompt, return_tensors="pt")
        best = min(best, time.perf_counter() - start)
    figures["preprocess_s"] = round(best, 4)
    figures["prompt_tokens"] = int(batch["input_ids"].shape[1])
    figures["image_tokens"] = int((batch["input_ids"] == gm.model.config.image_token_id).sum())

    LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=2).capture(
        inputs[0], DEFAULT_TEMPLATE
    )  # warm-up
    capturers = {
        ("forced", t): LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=t, stop_at_eos=False)
        for t in T_SWEEP
    }
    capturers |= {
        ("eos", t): LatentCapturer(gm, cameras=CAMERAS, layers="all", tokens=t) for t in T_SWEEP if t > 1
    }
    best, lengths = _best_times(capturers, inputs, DEFAULT_TEMPLATE, size.rounds)
    forced = {}
    for tokens in T_SWEEP:
        forced[tokens] = statistics.median(best[("forced", tokens), i] for i in range(len(inputs)))
        figures[f"capture_s_T{tokens}"] = round(forced[tokens], 4)
        if tokens > 1:
            eos = [best[("eos", tokens), i] for i in range(len(inputs))]
            figures[f"capture_eos_s_T{tokens}"] = round(float(np.mean(eos)), 4)
            figures[f"mean_length_T{tokens}"] = float(
                np.mean([lengths[("eos", tokens), i] for i in range(len(inputs))])
            )

    steps = np.array([t - 1 for t in T_SWEEP], dtype=float)
    per_token, prefill = np.polyfit(steps, np.array([forced[t] for t in T_SWEEP]), 1)
    figures["prefill_s"] = round(float(prefill), 4)
    figures["per_token_s"] = round(float(per_token), 5)

    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["rss_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    figures["stand_in"] = gm.is_random_stand_in
    return figures
