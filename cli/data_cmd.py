"""`netroller data ...`: dataset commands. `data synth` writes a synthetic nuScenes v1.0-mini dataset.

Example:
    netroller data synth --out work/nuscenes --scenes 4 --samples-per-scene 8 --seed 0
"""

from __future__ import annotations

from pathlib import Path

import typer

SUMMARY = "Datasets: generate a synthetic nuScenes v1.0-mini."

data_app = typer.Typer(
    name="data",
    help=SUMMARY + "\n\nExample: netroller data synth --out work/nuscenes",
    no_args_is_help=True,
)


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Dataset root to create (the devkit's dataroot)."),
    scenes: int = typer.Option(
        10, "--scenes", help="Number of scenes, 1..10 (v1.0-mini names; mini_val from 2 on)."
    ),
    samples_per_scene: int = typer.Option(40, "--samples-per-scene", help="Keyframes per scene, at 2 Hz."),
    seed: int = typer.Option(0, "--seed", help="Seed; the same options give byte-identical output."),
    width: int = typer.Option(480, "--width", help="Camera image width in pixels."),
    height: int = typer.Option(270, "--height", help="Camera image height in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty."),
) -> None:
    """Generate a synthetic nuScenes v1.0-mini: tables, camera images, lidar sweeps, map expansion, DriveLM QA.

    Example: netroller data synth --out work/nuscenes --scenes 4 --samples-per-scene 8
    """
    from netroller.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        out=out,
        scenes=scenes,
        samples_per_scene=samples_per_scene,
        seed=seed,
        image_width=width,
        image_height=height,
        overwrite=overwrite,
    )
    root = generate(cfg)
    typer.echo(
        f"wrote synthetic nuScenes v1.0-mini ({scenes} scenes x {samples_per_scene} keyframes) to {root}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
