"""`netroller eval`: score a trained run on a split (planning, detection, map) and write report and plots.

Every option is a field of EvalConfig (netroller.stages.evaluate), with that field's default and docstring.
"""

from __future__ import annotations

import typer

SUMMARY = "Evaluate a trained run: VAD-parity L2 / collision, nuScenes NDS and mAP, map AP; report and plots."

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


def register(app: typer.Typer) -> None:
    from netroller.cli.options import options, with_options
    from netroller.stages.evaluate import EvalConfig, evaluate

    eval_options = options(
        EvalConfig,
        "run",
        "index",
        "split",
        "max_samples",
        "device",
        "out_name",
        "dataroot",
        "num_plots",
        "cache",
        "latent_lag",
        "lag_policy",
        "shuffle_latents",
        "skip_damaged",
        name="cfg",
    )

    @app.command("eval", help=SUMMARY, epilog=_EPILOG)
    @with_options(eval_options)
    def eval_command(cfg: dict) -> None:
        out = evaluate(EvalConfig(**cfg))
        typer.echo(f"eval: {out}")
        typer.echo((out / "metrics.json").read_text().strip())
