"""`netroller pipeline`: the whole flow from one recipe (what `make pipeline` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

SUMMARY = (
    "Run synth -> prepare -> harvest -> train (baseline + NetRoller) -> eval -> report, skipping done steps."
)

_EPILOG = """\
Examples:

\b
  netroller pipeline                          # embedded recipe: synthetic data, tiny GM, into work/
\b
  netroller pipeline --recipe smoke --work /tmp/netroller-smoke   # a toy-size run in about a minute

Steps already done with the same settings are skipped; a killed run resumes where it stopped. The
comparison table and plots end up in WORK/report.md.
"""


def _pipeline(
    work: Path = typer.Option(Path("work"), "--work", help="Folder for everything the pipeline writes."),
    recipe: str = typer.Option("embedded", "--recipe", help="embedded | smoke."),
) -> None:
    from netroller.errors import ConfigError
    from netroller.pipeline.recipe import RECIPES
    from netroller.pipeline.run import run_pipeline

    if recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r} is not one of {', '.join(RECIPES)}")
    report = run_pipeline(RECIPES[recipe](work))
    typer.echo(report.read_text())


def register(app: typer.Typer) -> None:
    app.command(
        "pipeline",
        help=SUMMARY,
        epilog=_EPILOG,
    )(_pipeline)
