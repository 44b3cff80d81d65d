"""`netroller gm tiny|info`: build the embedded tiny GM, describe a GM checkpoint.

Examples:
    netroller gm tiny --out work/gm/tiny            # random-weight LLaVA stand-in, seed 0
    netroller gm tiny --out work/gm/tiny-s1 --seed 1
    netroller gm tiny --out work/gm/tiny-chat --chat-template   # the LLaVA with a chat template
    netroller gm tiny --arch qwen2-vl --out work/gm/tiny-qwen   # random-weight Qwen2-VL stand-in
    netroller gm tiny --format llama-adapter --out work/gm/tiny-la   # LLaMA-Adapter V2's released files
    netroller gm info --model work/gm/tiny          # layers, width, hashes, stand-in or not
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

SUMMARY = "The general model (VLM): build the embedded tiny stand-in, describe a checkpoint."

gm_app = typer.Typer(
    name="gm",
    help=(
        SUMMARY + "\n\n"
        "Examples:\n\n  netroller gm tiny --out work/gm/tiny\n\n  netroller gm info --model work/gm/tiny"
    ),
    no_args_is_help=True,
)


@gm_app.command("tiny")
def tiny(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Folder to write the model into (save_pretrained layout, or LLaMA-Adapter's files).",
    ),
    fmt: str = typer.Option(
        "hf",
        "--format",
        help="hf (a save_pretrained folder of --arch) or llama-adapter (params.json, consolidated.00.pth, "
        "tokenizer.model, llama_adapter.pth, clip.pt: LLaMA-Adapter V2's released formats).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights; same seed, same weights."),
    arch: str = typer.Option(
        "llava",
        "--arch",
        help="llava (CLIP + LLaMA, prompted Alpaca-style) or qwen2-vl (Qwen2-VL with its chat template).",
    ),
    chat_template: bool = typer.Option(
        False, "--chat-template", help="llava only: save a LLaVA-style chat template with the processor."
    ),
) -> None:
    """Build a tiny random-weight GM (locally trained tokenizer, nothing downloaded) into OUT.

    Skips the work if OUT already holds the same build. Example: netroller gm tiny --arch qwen2-vl --out DIR
    """
    from netroller.errors import ConfigError
    from netroller.models.gm.tiny import HF_ARCHS, TinyGMSpec, build_tiny_gm, built_files

    if fmt not in ("hf", "llama-adapter"):
        raise ConfigError(f"--format must be hf or llama-adapter, got {fmt!r}")
    if fmt == "llama-adapter":
        if arch != "llava" or chat_template:
            raise ConfigError("--arch and --chat-template apply to --format hf only")
        arch = "llama-adapter"
    elif arch not in HF_ARCHS:
        raise ConfigError(f"tiny GM arch must be one of {', '.join(HF_ARCHS)}, got {arch!r}")
    if chat_template and arch != "llava":
        raise ConfigError(
            f"--chat-template applies to --arch llava only (--arch {arch} has its own template)"
        )
    spec = TinyGMSpec(chat_template=True) if chat_template else None
    start = time.perf_counter()
    path = build_tiny_gm(out, arch=arch, seed=seed, spec=spec)  # type: ignore[arg-type]  # checked there
    weights = sum((path / name).stat().st_size for name in built_files(arch))  # type: ignore[arg-type]
    typer.echo(
        f"tiny {arch} GM (random-weight stand-in, seed {seed}) at {path}: "
        f"{weights / 2**20:.1f} MiB of files, {time.perf_counter() - start:.1f} s"
    )


@gm_app.command("info")
def info(
    model: str = typer.Option(
        ..., "--model", help="A save_pretrained folder, a hub id, or a LLaMA-Adapter V2 folder."
    ),
) -> None:
    """Load a GM and print what a harvest would record about it.

    Example: netroller gm info --model work/gm/tiny
    """
    from netroller.models.gm.loader import load_gm

    gm = load_gm(model)
    params = sum(p.numel() for p in gm.model.parameters())
    typer.echo(f"model        {gm.name}{' (random-weight stand-in)' if gm.is_random_stand_in else ''}")
    typer.echo(f"backend      {gm.info.backend}")
    typer.echo(f"class        {type(gm.model).__name__}, {params / 1e6:.2f} M parameters")
    typer.echo(f"text model   {gm.num_layers} layers, hidden {gm.hidden_size}")
    typer.echo(f"weights      sha256 {gm.info.model_hash}")
    typer.echo(f"processor    sha256 {gm.info.processor_hash}")


def register(app: typer.Typer) -> None:
    app.add_typer(gm_app, name="gm")
