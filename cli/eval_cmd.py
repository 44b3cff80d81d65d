"""`netroller eval`: score a trained run on a split (planning, detection, map) and write report and plots."""

from __future__ import annotations

from pathlib import Path

import typer

_EPILOG = """\
Examples:

\b
  netroller eval --run work/runs/baseline --index work/index.parquet
\b
  # a quick look at the first 8 val samples, on a GPU
  netroller eval --run work/runs/baseline --index work/index.parquet --max-samples 8 --device cuda
\b
  # a NetRoller run, its lag sweep and the shuffled-latent control (RUN/eval-lag3/, RUN/eval-shuffled/)
  netroller eval --run work/runs/bias-query --index work/index.parquet --cache work/cache
  netroller eval --run work/runs/bias-query --index work/index.parquet --cache work/cache --latent-lag 3
  netroller eval --run work/runs/bias-query --index work/index.parquet --cache work/cache --shuffle-latents

Writes RUN/eval/ (or RUN/<--out-name>/) in one rename: metrics.json, predictions.parquet, \
results_nusc.json, report.md and plots/. L2 and collision follow VAD (ST-P3 box collision), detection is \
nuscenes-devkit DetectionEval in VAD's 30 m x 60 m range, map AP is the Chamfer AP at 0.5/1.0/1.5 m.
"""


def _eval(
    run: Path = typer.Option(..., "--run", help="Run folder written by `netroller train`."),
    index: Path = typer.Option(..., "--index", help="Sample index (Parquet) from `netroller prepare`."),
    split: str = typer.Option("val", "--split", help="train | val."),
    max_samples: int | None = typer.Option(None, "--max-samples", help="Evaluate only the first N samples."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    out_name: str | None = typer.Option(
        None,
        "--out-name",
        help="Output folder name inside the run [default: the variant's: eval, eval-lag3, eval-shuffled].",
    ),
    dataroot: Path | None = typer.Option(None, "--dataroot", help="nuScenes root, if moved since prepare."),
    num_plots: int = typer.Option(3, "--num-plots", help="Samples that get BEV and camera pictures."),
    cache: Path | None = typer.Option(
        None, "--cache", help="Latent cache (NetRoller runs); its key must match the run's."
    ),
    latent_lag: int = typer.Option(
        0, "--latent-lag", help="Feed the latents of N keyframes earlier (same scene)."
    ),
    shuffle_latents: bool = typer.Option(
        False, "--shuffle-latents", help="Control: every sample gets another sample's latents."
    ),
    lag_policy: str = typer.Option(
        "exact",
        "--lag-policy",
        help="exact (the keyframe --latent-lag earlier) | annotated (the latest DriveLM-annotated keyframe at "
        "least --latent-lag earlier).",
    ),
    skip_damaged: bool = typer.Option(
        False,
        "--skip-damaged",
        help="Check every cached sample's checksum first; evaluate damaged ones without latents (counted) "
        "instead of stopping at the first.",
    ),
) -> None:
    from netroller.stages.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(
        run=run,
        index=index,
        split=split,
        out_name=out_name,
        max_samples=max_samples,
        device=device,
        dataroot=dataroot,
        num_plots=num_plots,
        cache=cache,
        latent_lag=latent_lag,
        shuffle_latents=shuffle_latents,
        lag_policy=lag_policy,
        skip_damaged=skip_damaged,
    )
    out = evaluate(cfg)
    typer.echo(f"eval: {out}")
    typer.echo((out / "metrics.json").read_text().strip())


def register(app: typer.Typer) -> None:
    app.command(
        "eval",
        help="Evaluate a trained run: VAD-parity L2 / collision, nuScenes NDS and mAP, map AP; report and plots.",
        epilog=_EPILOG,
    )(_eval)
