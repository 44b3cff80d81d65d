"""`netroller gm tiny|info`: build the embedded tiny GM, describe a GM checkpoint.

Examples:
    netroller gm tiny --out work/gm/tiny            # random-weight LLaVA stand-in, seed 0
    netroller gm tiny --out work/gm/tiny-s1 --seed 1
    netroller gm info --model work/gm/tiny          # layers, width, hashes, stand-in or not
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

gm_app = typer.Typer(
    name="gm",
    help=(
        "The general model (VLM): build the embedded tiny stand-in, describe a checkpoint.\n\n"
        "Examples:\n\n  netroller gm tiny --out work/gm/tiny\n\n  netroller gm info --model work/gm/tiny"
    ),
    no_args_is_help=True,
)


@gm_app.command("tiny")
def tiny(
    out: Path = typer.Option(..., "--out", help="Folder to write the model into (save_pretrained layout)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights; same seed, same weights."),
) -> None:
    """Build the tiny random-weight LLaVA GM (CLIP + LLaMA, locally trained tokenizer) into OUT.

    Skips the work if OUT already holds the same build. Example: netroller gm tiny --out work/gm/tiny
    """
    from netroller.models.gm.tiny import build_tiny_gm

    start = time.perf_counter()
    path = build_tiny_gm(out, seed=seed)
    weights = path / "model.safetensors"
    typer.echo(
        f"tiny GM (random-weight stand-in, seed {seed}) at {path}: "
        f"{weights.stat().st_size / 2**20:.1f} MiB of weights, {time.perf_counter() - start:.1f} s"
    )


@gm_app.command("info")
def info(
    model: str = typer.Option(..., "--model", help="A save_pretrained folder or a hub id."),
) -> None:
    """Load a GM and print what a harvest would record about it.

    Example: netroller gm info --model work/gm/tiny
    """
    from netroller.models.gm.loader import load_gm

    gm = load_gm(model)
    params = sum(p.numel() for p in gm.model.parameters())
    typer.echo(f"model        {gm.name}{' (random-weight stand-in)' if gm.is_random_stand_in else ''}")
    typer.echo(f"class        {type(gm.model).__name__}, {params / 1e6:.2f} M parameters")
    typer.echo(f"text model   {gm.num_layers} layers, hidden {gm.hidden_size}")
    typer.echo(f"weights      sha256 {gm.model_hash}")
    typer.echo(f"processor    sha256 {gm.processor_hash}")


def register(app: typer.Typer) -> None:
    app.add_typer(gm_app, name="gm")
