"""`netroller report RUN...`: several runs' evaluations in one Markdown table (and plots)."""

from __future__ import annotations

from pathlib import Path

import typer

SUMMARY = "Compare runs: baseline, NetRoller variants, controls and lags in one Markdown table."

_EPILOG = """\
Examples:

\b
  netroller report work/runs/baseline work/runs/bias-query work/runs/tf-query
\b
  netroller report work/runs/* --out work/report.md    # also writes work/report_plots/*.png
\b
  netroller report work/runs/* --index work/index.parquet   # with the no-model reference row
"""


def _report(
    runs: list[Path] = typer.Argument(..., help="Run folders with at least one eval*/ folder."),
    out: Path | None = typer.Option(None, "--out", help="Write the report here (plots beside it)."),
    index: Path | None = typer.Option(
        None,
        "--index",
        help="Sample index of the runs' data: adds the row of a planner without a model (the per-command "
        "mean of the training futures) to read the runs against.",
    ),
) -> None:
    from netroller.stages.report import collect, table, write_report

    if out is None:
        typer.echo(table(collect(runs, index=index)))
        return
    typer.echo(f"report: {write_report(runs, out, index=index)}")


def register(app: typer.Typer) -> None:
    app.command(
        "report",
        help=SUMMARY,
        epilog=_EPILOG,
    )(_report)
