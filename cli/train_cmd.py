"""`netroller train`: train VAD on an index's train split, or fine-tune it with the NetRoller adapter.

Without --cache / --online this is baseline VAD training (netroller.stages.train); with them it is the
NetRoller fine-tune (netroller.stages.finetune), which starts from --init and uses the authors' c1 recipe
unless options override it. `--num-workers N` trains data-parallel in N processes (netroller.distributed.ddp):
one per GPU with `--device cuda`, or CPU processes; `--batch-size` is the global batch, split among them.
Started by torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), each
process joins the launcher's group instead, across nodes; --num-workers is then refused.
Every option but --authors (a recipe that builds both configs) is a field of TrainConfig or NetRollerConfig,
with that field's default and docstring.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

SUMMARY = "Train VAD, or fine-tune it with the NetRoller adapter reading GM latents (--cache / --online)."

_EPILOG = """\
Examples:

\b
  # baseline VAD (debug recipe) on the index's train split
  netroller train --index work/index.parquet --out work/runs/baseline --epochs 2
\b
  # the same on 4 GPUs, data-parallel: global batch 8, 2 samples per GPU
  netroller train --index work/index.parquet --out work/runs/baseline --batch-size 8 \\
      --device cuda --num-workers 4
\b
  # the same launched by torchrun, 2 nodes x 8 GPUs (run on each node with its --node-rank)
  torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-addr node0 --master-port 29500 \\
      -m netroller.cli.main train --index work/index.parquet --out work/runs/baseline --batch-size 16 \\
      --device cuda
\b
  # NetRoller: Bias mode + Query Shift from a baseline run, latents from the cache (no GM loaded)
  netroller train --index work/index.parquet --cache work/cache --init work/runs/baseline \\
      --mode bias --shift query --out work/runs/bias-query
\b
  # TF mode + Feature Shift, GM latents 3 keyframes stale, adapter only, last GM layer only
  netroller train --index work/index.parquet --cache work/cache --init work/runs/baseline \\
      --mode tf --shift feature --latent-lag 3 --freeze-sm --layers-used -1 --out work/runs/tf-lag3
\b
  # the authors' way, the GM inside the loop (to measure what the cache saves)
  netroller train --index work/index.parquet --online --model work/gm/tiny --tokens 8 \\
      --init work/runs/baseline --out work/runs/online
"""


def _c1_note(field: str) -> str:
    """What an option that the NetRoller recipe changes gives in each mode."""
    from netroller.stages.finetune import finetune_c1
    from netroller.stages.train import TrainConfig

    base = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == field)
    c1 = getattr(finetune_c1(index=Path("index"), out=Path("run")), field)
    return f"Default {base}; NetRoller runs (finetune_c1) {c1}."


def register(app: typer.Typer) -> None:
    from netroller.cli.options import Flag, options, with_options
    from netroller.models.vad.config import RECIPES
    from netroller.stages.finetune import AUTHORS_RECIPES, NetRollerConfig
    from netroller.stages.train import TrainConfig, default_loader_workers

    train_options = options(
        TrainConfig,
        "index",
        "out",
        Flag("recipe", note=f"One of {', '.join(RECIPES)}."),
        Flag("epochs", unset=True, note=_c1_note("epochs")),
        "batch_size",
        Flag("workers", "--num-workers", note="Spawned on this machine; under torchrun, leave it out."),
        Flag("num_workers", "--loader-workers", note=f"This machine: {default_loader_workers()}."),
        Flag("lr", unset=True, note=_c1_note("lr")),
        "accumulate",
        "seed",
        "resume",
        "max_samples",
        "device",
        "dataroot",
        name="train",
    )
    netroller_options = options(
        NetRollerConfig,
        "cache",
        "init",
        "mode",
        "shift",
        "latent_lag",
        "lag_policy",
        "freeze_sm",
        "layers_used",
        "layer_embedding",
        "zero_init",
        "skip_damaged",
        name="netroller",
        panel="NetRoller (with --cache or --online)",
    )
    online_options = options(
        NetRollerConfig,
        "online",
        "model",
        "tokens",
        "layers",
        "prompt",
        "drivelm",
        "prompt_format",
        "latents",
        name="online",
        panel="NetRoller --online: the GM in the loop",
    )

    @app.command("train", epilog=_EPILOG)
    @with_options(train_options, netroller_options, online_options)
    def train_command(
        train: dict,
        netroller: dict,
        online: dict,
        authors: str | None = typer.Option(
            None,
            "--authors",
            help=f"One of the authors' configurations ({' | '.join(AUTHORS_RECIPES)}): adapter, lag, schedule "
            "and their effective batch of 64 for --num-workers; --mode/--shift/--batch-size/--latent-lag are "
            "then the recipe's. Needs --cache.",
            rich_help_panel="NetRoller (with --cache or --online)",
        ),
    ) -> None:
        """Train VAD, or fine-tune it with the NetRoller adapter reading GM latents (--cache / --online)."""
        from netroller.distributed.ddp import is_main_process, run_stage, world_size
        from netroller.stages.finetune import authors_recipe, finetune, finetune_c1
        from netroller.stages.train import train as train_vad

        # Under torchrun the launcher's processes are the workers; otherwise --num-workers spawns them.
        train["workers"] = world_size(train.get("workers", 1))
        if netroller["cache"] is None and not online["online"]:
            cfg = TrainConfig(**train)
            run = run_stage(train_vad, (cfg,), workers=cfg.workers, device=cfg.device)
        else:
            if authors is None:
                nr = NetRollerConfig(**netroller, **online)
                cfg = finetune_c1(**train)
            elif netroller["cache"] is None:
                raise typer.BadParameter("--authors needs --cache", param_hint="--authors")
            else:
                fixed = ("index", "out", "batch_size", "workers", "accumulate")  # the recipe's
                keep = {k: v for k, v in train.items() if k not in fixed}
                recipe = authors_recipe(
                    authors,
                    train["index"],
                    train["out"],
                    cache=netroller["cache"],
                    init=netroller["init"],
                    workers=train["workers"],
                    **keep,
                )
                cfg, nr = recipe.train, recipe.netroller
            # Each worker builds its own adapter, latent reader and hooks from the two configs.
            run = run_stage(finetune, (cfg, nr), workers=cfg.workers, device=cfg.device)
        if is_main_process():
            typer.echo(f"run: {run}")
