"""`netroller train`: train VAD on an index's train split, or fine-tune it with the NetRoller adapter.

Without --cache / --online this is baseline VAD training (netroller.stages.train); with them it is the
NetRoller fine-tune (netroller.stages.finetune), which starts from --init and uses the authors' c1 recipe
unless options override it. `--num-workers N` trains data-parallel in N processes (netroller.distributed.ddp):
one per GPU with `--device cuda`, or CPU processes; `--batch-size` is the global batch, split among them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from netroller.models.vad.config import RECIPES

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


def register(app: typer.Typer) -> None:
    @app.command("train", epilog=_EPILOG)
    def train_command(
        index: Path = typer.Option(
            ..., "--index", help="Sample index (Parquet) written by `netroller prepare`."
        ),
        out: Path = typer.Option(..., "--out", help="Run dir (checkpoints, configs, metrics.jsonl)."),
        recipe: str = typer.Option("debug", "--recipe", help=f"VAD recipe: {', '.join(RECIPES)}."),
        epochs: int | None = typer.Option(
            None, "--epochs", help="Total epochs (with --resume, the total to reach). Default 1; NetRoller 5."
        ),
        batch_size: int = typer.Option(
            2, "--batch-size", help="Samples per step (the global batch, split among --num-workers)."
        ),
        num_workers: int = typer.Option(
            1,
            "--num-workers",
            help="Data-parallel training processes: one per GPU with --device cuda, else CPU processes.",
        ),
        lr: float | None = typer.Option(
            None, "--lr", help="Peak AdamW learning rate (backbone x0.1). Default 2e-4; NetRoller 3.125e-5."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of init, dropout and data order."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue the run in --out after its last epoch."
        ),
        max_samples: int | None = typer.Option(None, "--max-samples", help="Use only the first N samples."),
        device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda."),
        dataroot: Path | None = typer.Option(None, "--dataroot", help="Override the index's dataroot."),
        cache: Path | None = typer.Option(
            None, "--cache", help="NetRoller: latent cache from `netroller harvest` (the GM is not loaded)."
        ),
        init: Path | None = typer.Option(
            None, "--init", help="NetRoller: baseline run dir (or .safetensors)."
        ),
        mode: str = typer.Option("bias", "--mode", help="NetRoller: bias (1 roller vector) | tf (8 tokens)."),
        shift: str = typer.Option(
            "query",
            "--shift",
            help="NetRoller: query (BEV queries, before the encoder) | feature (after it).",
        ),
        latent_lag: int = typer.Option(
            0, "--latent-lag", help="NetRoller: feed the GM latents of N keyframes earlier in the same scene."
        ),
        freeze_sm: bool = typer.Option(False, "--freeze-sm", help="NetRoller: train the adapter only."),
        layers_used: str = typer.Option(
            "all", "--layers-used", help="NetRoller: GM layers fed to the adapter: all | -1 | 0,15,31."
        ),
        no_layer_embedding: bool = typer.Option(
            False, "--no-layer-embedding", help="NetRoller ablation: no positional layer embedding."
        ),
        online: bool = typer.Option(
            False, "--online", help="NetRoller: run the GM in the loop instead of --cache."
        ),
        model: str | None = typer.Option(
            None, "--model", help="--online: GM path (default: the tiny stand-in)."
        ),
        tokens: int = typer.Option(1, "--tokens", help="--online: T positions per sample."),
        layers: str = typer.Option("all", "--layers", help="--online: GM layers captured."),
        prompt: str | None = typer.Option(None, "--prompt", help="--online: question template."),
        drivelm: Path | None = typer.Option(None, "--drivelm", help="--online: DriveLM QA JSON."),
        prompt_format: str = typer.Option(
            "auto", "--prompt-format", help="--online: chat | alpaca | auto, as `harvest --prompt-format`."
        ),
        latents: str = typer.Option(
            "generated", "--latents", help="--online: generated | teacher-forced (needs --drivelm)."
        ),
        skip_damaged: bool = typer.Option(
            False,
            "--skip-damaged",
            help="--cache: check every sample's checksum first and train without the damaged ones "
            "(counted) instead of stopping at the first.",
        ),
        accumulate: int = typer.Option(
            1,
            "--accumulate",
            help="Micro-batches per optimizer step (gradient accumulation, exact: the step of one batch of "
            "--batch-size).",
        ),
        lag_policy: str = typer.Option(
            "exact",
            "--lag-policy",
            help="NetRoller: exact (the keyframe --latent-lag earlier) | annotated (the latest DriveLM-annotated "
            "keyframe at least --latent-lag earlier, the authors' rule).",
        ),
        authors: str | None = typer.Option(
            None,
            "--authors",
            help="NetRoller: one of the authors' configurations (c1 | c2 | c3 | c4 | frozen-bias | "
            "frozen-bias-le | frozen-tf): adapter, lag, schedule and their effective batch of 64 for "
            "--num-workers; --mode/--shift/--batch-size/--latent-lag are then the recipe's.",
        ),
    ) -> None:
        """Train VAD, or fine-tune it with the NetRoller adapter reading GM latents (--cache / --online)."""
        from netroller.stages.train import TrainConfig, train

        common = dict(
            index=index,
            out=out,
            recipe=recipe,
            batch_size=batch_size,
            seed=seed,
            resume=resume,
            max_samples=max_samples,
            device=device,
            dataroot=dataroot,
            workers=num_workers,
            accumulate=accumulate,
        )
        if epochs is not None:
            common["epochs"] = epochs
        if lr is not None:
            common["lr"] = lr
        if cache is None and not online:
            run = train(TrainConfig(**common))
        elif authors is not None:
            from netroller.stages.finetune import authors_recipe, finetune

            if cache is None:
                raise typer.BadParameter("--authors needs --cache", param_hint="--authors")
            keep = {
                k: v
                for k, v in common.items()
                if k not in ("index", "out", "batch_size", "workers", "accumulate")
            }
            f = authors_recipe(authors, index, out, cache=cache, init=init, workers=num_workers, **keep)
            if f.train.workers > 1:
                from netroller.distributed.ddp import launch

                run = launch(finetune, (f.train, f.netroller), workers=f.train.workers, device=f.train.device)
            else:
                run = finetune(f.train, f.netroller)
        else:
            from netroller.stages.finetune import NetRollerConfig, finetune, finetune_c1

            nr = NetRollerConfig(
                cache=cache,
                init=init,
                mode=mode,
                shift=shift,
                latent_lag=latent_lag,
                lag_policy=lag_policy,
                freeze_sm=freeze_sm,
                layers_used=layers_used,
                layer_embedding=not no_layer_embedding,
                online=online,
                model=model,
                tokens=tokens,
                layers=layers,
                prompt=prompt,
                drivelm=drivelm,
                prompt_format=prompt_format,
                latents=latents,
                skip_damaged=skip_damaged,
            )
            cfg = finetune_c1(**common)
            if cfg.workers > 1:
                from netroller.distributed.ddp import launch

                # Each worker builds its own adapter, latent reader and hooks from the two configs.
                run = launch(finetune, (cfg, nr), workers=cfg.workers, device=cfg.device)
            else:
                run = finetune(cfg, nr)
        typer.echo(f"run: {run}")
