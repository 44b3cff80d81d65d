"""NetRoller fine-tune epoch time: latents from the cache vs already in RAM vs the GM online.

- train_cache_overhead_ratio: epoch time reading latents through the cache reader / epoch time with the
  same latents already in memory (goal <= 1.05: the cache must never be what training waits for).
- cache_vs_online_epoch_speedup: epoch time with the GM in the loop (the authors' way, `--online`, T=8)
  / epoch time reading the cache; same GM (the embedded tiny one), same data, same model.
The three are run interleaved, round by round, and the medians compared.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from netroller.models.vad.batch import LatentInputs

TOKENS = 8
ROUNDS = 5


class InMemoryLatents:
    """Every sample's latents read once up front; `get` only stacks tensors (the in-RAM reference)."""

    def __init__(self, source, tokens: list[str]):
        one = source.get(tokens)
        self.rows = {t: (one.hidden[i], one.length[i], one.present[i]) for i, t in enumerate(tokens)}
        self.empty = (torch.zeros_like(one.hidden[0]), torch.tensor(0), torch.tensor(False))

    def get(self, tokens):
        rows = [self.rows.get(t, self.empty) if t is not None else self.empty for t in tokens]
        return LatentInputs(
            hidden=torch.stack([r[0] for r in rows]),
            length=torch.stack([r[1] for r in rows]),
            present=torch.stack([r[2] for r in rows]),
        )


def _epoch_seconds(cfg, nr, setup, source) -> float:
    from netroller.data.latents import LatentCollate
    from netroller.models.vad.config import recipe
    from netroller.models.vad.model import VAD
    from netroller.stages.finetune import netroller_hooks
    from netroller.stages.train import build_optimizer, lr_factor, make_loader, train_step

    cfg, hooks, _ = netroller_hooks(cfg, nr, setup)
    hooks.collate = LatentCollate(source, hooks.collate.collate)
    torch.manual_seed(0)
    model = VAD(recipe(cfg.recipe))
    opt = build_optimizer(model, hooks.modules, cfg)
    total = -(-len(hooks.dataset) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
    model.train()
    t0 = time.perf_counter()
    for batch in make_loader(hooks.dataset, cfg, 1, hooks.collate):
        train_step(model, batch, opt, sched, cfg, hooks)
    return time.perf_counter() - t0


def run() -> dict:
    from netroller.data.index import read_index
    from netroller.data.synth import SynthConfig, generate
    from netroller.models.gm.tiny import build_tiny_gm
    from netroller.stages.finetune import NetRollerConfig, finetune_c1, open_latents
    from netroller.stages.harvest import HarvestConfig, harvest
    from netroller.stages.prepare import PrepareConfig, prepare

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = generate(SynthConfig(out=tmp / "nuscenes", scenes=3, samples_per_scene=16, seed=0))
        index = prepare(PrepareConfig(dataroot=root, version="v1.0-mini", out=tmp / "index.parquet"))
        gm = build_tiny_gm(tmp / "gm")
        t0 = time.perf_counter()
        cache = harvest(
            HarvestConfig(index=index, out=tmp / "cache", model=str(gm), tokens=TOKENS, workers=0)
        )
        harvest_s = time.perf_counter() - t0
        cfg = finetune_c1(index, tmp / "run", epochs=1, batch_size=2, split="train")
        nr_cache = NetRollerConfig(cache=cache)
        nr_online = NetRollerConfig(online=True, model=str(gm), tokens=TOKENS)
        cached = open_latents(nr_cache, index)
        online = open_latents(nr_online, index)
        tokens = [r.sample_token for r in read_index(index).records]
        ram = InMemoryLatents(cached.source, tokens)
        times: dict[str, list[float]] = {"cache": [], "ram": [], "online": []}
        for _ in range(ROUNDS):
            times["cache"].append(_epoch_seconds(cfg, nr_cache, cached, cached.source))
            times["ram"].append(_epoch_seconds(cfg, nr_cache, cached, ram))
            times["online"].append(_epoch_seconds(cfg, nr_online, online, online.source))
        n = len(read_index(index).split("train"))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "samples_per_epoch": n,
        "tokens": TOKENS,
        "epoch_seconds_cache": round(med["cache"], 3),
        "epoch_seconds_ram": round(med["ram"], 3),
        "epoch_seconds_online": round(med["online"], 3),
        "epoch_seconds_all_rounds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "harvest_seconds_once": round(harvest_s, 2),
        "train_cache_overhead_ratio": round(med["cache"] / med["ram"], 3),
        "cache_vs_online_epoch_speedup": round(med["online"] / med["cache"], 3),
        "gm_seconds_per_sample_online": round((med["online"] - med["cache"]) / n, 4),
    }
