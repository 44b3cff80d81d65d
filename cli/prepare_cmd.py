"""`netroller prepare`: walk nuScenes once with the devkit and write the sample index (Parquet)."""

from __future__ import annotations

from pathlib import Path

import typer

SUMMARY = "Index every nuScenes keyframe sample (VAD conventions) into one Parquet file for the later stages."

_EPILOG = """\
Examples:

\b
  # the synthetic set from `netroller data synth`
  netroller prepare --dataroot work/nuscenes --version v1.0-mini --out work/index.parquet
\b
  # real nuScenes trainval
  netroller prepare --dataroot /data/sets/nuscenes --version v1.0-trainval --out work/index-trainval.parquet

One row per keyframe sample, in VAD's conventions (camera paths and calibration, ego trajectory and command, GT boxes with agent futures, vectorized map). The file is replaced atomically; with --no-overwrite an existing index of the same dataroot and version is kept.
"""


def _prepare(
    dataroot: Path = typer.Option(..., "--dataroot", help="nuScenes root (holds v1.0-*/, samples/, maps/)."),
    version: str = typer.Option("v1.0-mini", "--version", help="v1.0-mini | v1.0-trainval | v1.0-test."),
    out: Path = typer.Option(..., "--out", help="Index file to write (Parquet)."),
    overwrite: bool = typer.Option(
        True, "--overwrite/--no-overwrite", help="Rebuild an existing index, or keep it if it matches."
    ),
) -> None:
    from netroller.stages.prepare import PrepareConfig, prepare

    path = prepare(PrepareConfig(dataroot=dataroot, version=version, out=out, overwrite=overwrite))
    typer.echo(f"index: {path}")


def register(app: typer.Typer) -> None:
    app.command(
        "prepare",
        help=SUMMARY,
        epilog=_EPILOG,
    )(_prepare)
