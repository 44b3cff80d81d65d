"""The `eval` stage: run a trained VAD on a split, score it in VAD's conventions, write RUN/<out_name>/.

Outputs, all written into a temporary folder that is renamed onto RUN/<out_name> at the end (a reader sees
the previous evaluation or the complete new one, never a half-written mix):
    metrics.json         flat keys: plan_l2_{1,2,3}s, plan_l2_at_{1,2,3}s, plan_col_{1,2,3}s (VAD's),
                         plan_col_exact_{1,2,3}s (ours), det_nds, det_map, det_ap_<class>, map_ap,
                         map_ap_<class>, num_samples, recipe, ..., and VAD's own names
                         (`netroller.metrics.scoring.VAD_KEYS`: plan_L2_1s, plan_obj_box_col_1s, ...)
    predictions.parquet  one row per sample: plan / GT trajectory, command, boxes, map vectors (flattened)
    results_nusc.json    the detection submission (global frame) the devkit scored
    report.md            metric table, provenance notes, plots
    plots/               bev_<i>.png and cam_front_<i>.png for the first `num_plots` samples

Usage:
    netroller eval --run work/runs/baseline --index work/index.parquet --split val
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from netroller.data.index import Index, SampleRecord, read_index
from netroller.data.nusc import open_nuscenes
from netroller.errors import ConfigError, ModelError
from netroller.metrics.detection import eval_set_for
from netroller.metrics.plots import plot_bev, plot_front_camera
from netroller.metrics.report import (
    data_note,
    gm_note,
    is_synthetic,
    metrics_json,
    privileged_note,
    render_report,
)
from netroller.metrics.scoring import compute_metrics
from netroller.stages.run_dir import run_recipe
from netroller.storage.atomic import atomic_path


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What to evaluate and where the results go."""

    run: Path
    """Run folder written by `train` (train_config.json, model_config.json, checkpoints/last.safetensors)."""
    index: Path
    """Sample index (Parquet) of the dataset to evaluate on."""
    split: Literal["train", "val"] = "val"
    """Index split to evaluate (nuScenes val for parity with the paper)."""
    out_name: str | None = None
    """Name of the output folder inside the run; None: the latent variant's (`variant_name`: eval, eval-lag3,
    eval-shuffled), so that variants sit beside each other."""
    max_samples: int | None = None
    """Evaluate only the first N samples of the split (None: all)."""
    device: str = "cpu"
    """Torch device for the model."""
    dataroot: Path | None = None
    """nuScenes root, if it moved since the index was written (default: the index's own)."""
    num_plots: int = 3
    """How many samples get BEV and front-camera pictures."""
    cache: Path | None = None
    """Latent cache for a NetRoller run (refused unless its key matches the one the run was trained on)."""
    latent_lag: int = 0
    """NetRoller: the sample at t gets the latents of t - lag in the same scene (none before the scene has them)."""
    lag_policy: str = "exact"
    """NetRoller: "exact" (the keyframe `latent_lag` earlier) or "annotated" (the latest DriveLM-annotated
    keyframe at least `latent_lag` earlier, the authors' rule)."""
    shuffle_latents: bool = False
    """NetRoller control: every sample gets another sample's latents (fixed permutation, no fixed points)."""
    shuffle_seed: int = 0
    """Seed of that permutation."""
    skip_damaged: bool = False
    """NetRoller: check every cached sample's checksum first and evaluate the damaged ones without latents
    (counted in metrics.json), instead of stopping at the first."""
    privileged: bool = False
    """NetRoller: the cache's latents carry privileged information (the pipeline's positive control, teacher-
    forced on ground-truth futures); metrics.json and report.md label the evaluation as a check, not a result."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "index", Path(self.index))
        if self.dataroot is not None:
            object.__setattr__(self, "dataroot", Path(self.dataroot))
        if self.split not in ("train", "val"):
            raise ConfigError(f"EvalConfig.split must be 'train' or 'val', got {self.split!r}")
        if self.out_name is not None and (
            not self.out_name or "/" in self.out_name or self.out_name.startswith(".")
        ):
            raise ConfigError(f"EvalConfig.out_name must be a plain folder name, got {self.out_name!r}")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 1):
            raise ConfigError(
                f"EvalConfig.max_samples must be a positive integer or None, got {self.max_samples!r}"
            )
        if self.cache is not None:
            object.__setattr__(self, "cache", Path(self.cache))
        if not isinstance(self.latent_lag, int) or self.latent_lag < 0:
            raise ConfigError(f"EvalConfig.latent_lag must be an integer >= 0, got {self.latent_lag!r}")
        if self.lag_policy not in ("exact", "annotated"):
            raise ConfigError(
                f"EvalConfig.lag_policy must be 'exact' or 'annotated', got {self.lag_policy!r}"
            )
        if not isinstance(self.num_plots, int) or self.num_plots < 0:
            raise ConfigError(f"EvalConfig.num_plots must be an integer >= 0, got {self.num_plots!r}")

    @property
    def folder(self) -> Path:
        """Where the evaluation is written: RUN/<out_name>."""
        return self.run / (
            self.out_name or variant_name(self.latent_lag, self.shuffle_latents, self.lag_policy)
        )


def variant_name(latent_lag: int = 0, shuffle_latents: bool = False, lag_policy: str = "exact") -> str:
    """The eval folder of a latent variant: eval, eval-lag3, eval-lag3-annotated, eval-shuffled, ..."""
    name = "eval"
    if latent_lag:
        name += f"-lag{latent_lag}"
    if lag_policy != "exact":
        name += f"-{lag_policy}"
    if shuffle_latents:
        name += "-shuffled"
    return name


def predict(
    model, vad_cfg, index: Index, cfg: EvalConfig, dataroot: Path, roller=None, latents=None
) -> tuple[list, int]:
    """Decoded predictions (`VADPrediction`) of the first `max_samples` samples of the split, in order, and
    how many of those samples had no latents.

    With a NetRoller adapter (`roller`) each batch carries the latents of `latents` (a LatentSetup) for the
    samples chosen by the lag / shuffle settings, and the adapter shifts the BEV. A sample without latents
    (a lag before its scene starts, a sample the harvest could not process) sees only the nonsensical token.
    """
    from netroller.data.dataset import SampleDataset, collate
    from netroller.data.latents import QuestionDraw
    from netroller.models.vad.predictions import decode
    from netroller.stages.latents import feed_latents

    dataset = SampleDataset(
        index, cfg.split, vad=vad_cfg, train=False, dataroot=dataroot, max_samples=cfg.max_samples
    )
    if note := dataset.unreadable_note():
        print(f"eval: {note}", file=sys.stderr, flush=True)
    collate_fn = collate
    if roller is not None:
        # Question 0 of every sample: the question `--questions one` asks, whatever the cache holds.
        feed = feed_latents(
            latents,
            dataset,
            index,
            lag=cfg.latent_lag,
            shuffle=cfg.shuffle_latents,
            shuffle_seed=cfg.shuffle_seed,
            lag_policy=cfg.lag_policy,
            draw=QuestionDraw("first"),
        )
        dataset, collate_fn = feed.dataset, feed.collate
    # One sample at a time in the index's scene order: the previous BEV is carried through each scene, as
    # the official test does (`VAD.forward_test`).
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=collate_fn)
    model.eval()
    preds = []
    without_latents = 0
    state = None
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"eval {cfg.split}", unit="sample"):
            batch = batch.to(cfg.device)
            shift = None
            if roller is not None:
                lat = batch.latents
                without_latents += int((~lat.present).sum())
                shift = roller.shift(lat.hidden, lat.length, lat.present)
            outputs, state = model.forward_test(
                batch.inputs.frame, batch.inputs.scene_tokens[0], state, shift
            )
            preds.extend(decode(outputs, batch.sample_tokens, batch.inputs.command, vad_cfg))
    return preds, without_latents


def _open_run_latents(meta: dict | None, cfg: EvalConfig):
    """The run's latents from --cache (a `LatentSetup`, None for a VAD-only run), after checking the cache
    key against the run's."""
    from netroller.stages.latents import open_cache
    from netroller.storage.schema import LatentKey

    if meta is None:
        if cfg.cache is not None or cfg.latent_lag or cfg.shuffle_latents or cfg.privileged:
            raise ConfigError(
                f"{cfg.run} is a VAD-only run (no NetRoller adapter): --cache, --latent-lag, "
                "--shuffle-latents and privileged do not apply"
            )
        return None
    if cfg.cache is None:
        raise ConfigError(f"{cfg.run} is a NetRoller run: give the latent cache with --cache")
    trained_on = LatentKey.from_dict(meta["latents_key"])
    # Strict but for the authors' pairing (trained teacher-forced, evaluated on generated latents).
    return open_cache(
        cfg.cache,
        layers=trained_on.layers,
        skip_damaged=cfg.skip_damaged,
        expect=trained_on,
        evaluating=True,
    )


def evaluate(cfg: EvalConfig) -> Path:
    """Evaluate the run on the split; returns `cfg.folder`. ModelError for a missing or mismatched run."""
    from netroller.stages.finetune import load_netroller_run

    if not cfg.run.is_dir():
        raise ModelError(f"run folder not found: {cfg.run}")
    model, roller, meta, vad_cfg, _ = load_netroller_run(cfg.run, device=cfg.device)
    latents = _open_run_latents(meta, cfg)
    index = read_index(cfg.index)
    dataroot = index.dataroot(cfg.dataroot)
    eval_set = eval_set_for(index.meta.version, cfg.split)
    nusc = open_nuscenes(dataroot, index.meta.version)  # before inference: a broken dataroot fails fast
    preds, without_latents = predict(model, vad_cfg, index, cfg, dataroot, roller=roller, latents=latents)
    records = {r.sample_token: r for r in index.split(cfg.split)}
    target = cfg.folder
    with atomic_path(target) as tmp:
        tmp.mkdir()
        metrics = compute_metrics(preds, records, nusc=nusc, eval_set=eval_set, work=tmp, dataroot=dataroot)
        metrics["recipe"] = run_recipe(cfg.run)
        metrics["split"] = cfg.split
        # Samples left out for unreadable camera images (see SampleDataset.unreadable).
        metrics["samples_unreadable"] = len(index.split(cfg.split)[: cfg.max_samples]) - len(preds)
        if roller is not None:
            nr = meta["netroller"]
            metrics["netroller_mode"] = nr["mode"]
            metrics["netroller_shift"] = nr["shift"]
            metrics["latent_lag"] = cfg.latent_lag
            metrics["lag_policy"] = cfg.lag_policy
            metrics["latent_pairing"] = latents.pairing
            metrics["shuffled_latents"] = cfg.shuffle_latents
            metrics["samples_without_latents"] = without_latents
            if cfg.privileged:
                metrics["privileged_latents"] = True
            if cfg.skip_damaged:
                # Damaged samples of the whole cache, read as absent (counted in samples_without_latents
                # where an evaluated sample would have read one).
                metrics["cache_samples_damaged_left_out"] = len(latents.damaged)
        (tmp / "metrics.json").write_text(metrics_json(metrics))
        write_predictions(preds, records, tmp / "predictions.parquet")
        plots = _plots(preds[: cfg.num_plots], records, dataroot, tmp / "plots")
        scenes = {records[p.sample_token].scene_token for p in preds}
        synthetic = is_synthetic(nusc.get("scene", t)["description"] for t in scenes)
        notes = [
            data_note(dataroot, index.meta.version, synthetic=synthetic),
            gm_note(cfg.cache if roller is not None else None, pairing=latents.pairing if latents else None),
        ]
        if roller is not None and cfg.privileged:
            notes.append(privileged_note())
        report = render_report(metrics, run=cfg.run, split=cfg.split, notes=notes, plots=plots)
        (tmp / "report.md").write_text(report)
    return target


def write_predictions(preds: list, records: dict[str, SampleRecord], path: Path) -> Path:
    """predictions.parquet: one row per sample; ragged arrays flattened with their count beside them.

    Shapes: plan_traj / gt_traj (6, 2), gt_mask (6,), boxes (num_boxes, 9), scores / labels (num_boxes,),
    map_vectors (num_map, P, 2), map_scores / map_labels (num_map,); all lidar frame, index conventions.
    """

    def flat(arrays, dtype) -> pa.Array:
        return pa.array(
            [np.asarray(a, dtype=dtype).reshape(-1) for a in arrays],
            type=pa.list_(pa.from_numpy_dtype(dtype)),
        )

    recs = [records[p.sample_token] for p in preds]
    table = pa.table(
        {
            "sample_token": pa.array([p.sample_token for p in preds], type=pa.string()),
            "command": pa.array([r.command for r in recs], type=pa.int64()),
            "plan_traj": flat([p.plan_traj for p in preds], np.float32),
            "gt_traj": flat([r.ego_fut_traj for r in recs], np.float32),
            "gt_mask": flat([r.ego_fut_mask for r in recs], np.float32),
            "num_boxes": pa.array([len(p.scores) for p in preds], type=pa.int64()),
            "boxes": flat([p.boxes for p in preds], np.float32),
            "scores": flat([p.scores for p in preds], np.float32),
            "labels": flat([p.labels for p in preds], np.int64),
            "num_map": pa.array([len(p.map_scores) for p in preds], type=pa.int64()),
            "map_vectors": flat([p.map_vectors for p in preds], np.float32),
            "map_scores": flat([p.map_scores for p in preds], np.float32),
            "map_labels": flat([p.map_labels for p in preds], np.int64),
        }
    )
    pq.write_table(table, path)
    return path


def _plots(preds: list, records: dict[str, SampleRecord], dataroot: Path, folder: Path) -> list[str]:
    """Write the pictures; returns their paths relative to the eval folder (for the report)."""
    folder.mkdir()
    names = []
    for i, p in enumerate(tqdm(preds, desc="plots", unit="sample", leave=False)):
        rec = records[p.sample_token]
        plot_bev(rec, p, folder / f"bev_{i}.png")
        plot_front_camera(rec, p, dataroot, folder / f"cam_front_{i}.png")
        names += [f"plots/bev_{i}.png", f"plots/cam_front_{i}.png"]
    return names
