"""`netroller vad import`: turn a released VAD checkpoint into a run dir.

Examples:
    netroller vad import VAD_tiny.pth --recipe vad-tiny --out work/runs/vad-tiny
    netroller eval --run work/runs/vad-tiny --index work/index.parquet
    netroller train --index work/index.parquet --cache work/cache --init work/runs/vad-tiny --recipe vad-tiny \\
        --mode bias --shift query --out work/runs/bias-query
"""

from __future__ import annotations

from pathlib import Path

import typer

SUMMARY = "The specialized model (VAD): import the released checkpoints."

vad_app = typer.Typer(
    name="vad",
    help=(
        SUMMARY + "\n\n"
        "Example:\n\n  netroller vad import VAD_tiny.pth --recipe vad-tiny --out work/runs/vad-tiny"
    ),
    no_args_is_help=True,
)


@vad_app.command("import")
def import_cmd(
    checkpoint: Path = typer.Argument(..., help="The official checkpoint (.pth: a dict with 'state_dict')."),
    recipe: str = typer.Option(
        ..., "--recipe", help="vad-tiny or vad-base: the preset the checkpoint is of."
    ),
    out: Path = typer.Option(..., "--out", help="The run dir to create (must not exist)."),
    trust: bool = typer.Option(
        False, "--trust", help="Unpickle objects beyond tensors (only for a file from a source you trust)."
    ),
) -> None:
    """Check every tensor of CHECKPOINT against the recipe's VAD (names and shapes) and write a run dir
    that `netroller eval` evaluates and `netroller train --init` fine-tunes.

    Example: netroller vad import VAD_base.pth --recipe vad-base --out work/runs/vad-base
    """
    from netroller.stages.vad_import import import_checkpoint

    run = import_checkpoint(checkpoint, recipe, out, trust=trust)
    typer.echo(f"{recipe} checkpoint {checkpoint} -> run dir {run}")


def register(app: typer.Typer) -> None:
    app.add_typer(vad_app)
