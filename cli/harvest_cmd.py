"""`netroller harvest`: run the GM over the index once and write its hidden states to a latent cache."""

from __future__ import annotations

from pathlib import Path

import typer

_EPILOG = """\
Examples:

  # the embedded tiny GM (random weights, a stand-in), one prefill position, all layers, in this process
  netroller harvest --index work/index.parquet --out work/cache --workers 0

  # a real checkpoint, 3 layers, up to 15 generated tokens, 4 GPU actors on a Ray cluster
  netroller harvest --index work/index.parquet --out work/cache-llava --model /ckpt/llava-1.5-7b-hf
  --layers 0,15,31 --tokens 16 --workers 4 --gpus-per-worker 1 --ray-address auto

  # per-sample DriveLM questions; a re-run trusting committed shards without re-hashing them
  netroller harvest --index work/index.parquet --out work/cache --drivelm work/nuscenes/drivelm_qa.json --no-verify

  # the authors' latents: teacher-forced on the DriveLM answers (training) and sampled at 0.1 / 0.75 (test)
  netroller harvest --index work/index.parquet --out work/cache-tf --drivelm work/nuscenes/drivelm_qa.json
  --tokens 192 --latents teacher-forced --prompt-format alpaca
  netroller harvest --index work/index.parquet --out work/cache-gen --drivelm work/nuscenes/drivelm_qa.json
  --tokens 192 --decode sample --temperature 0.1 --top-p 0.75 --prompt-format alpaca

  # the paper's GM, LLaMA-Adapter V2 (DriveLM) from its released files (README: the folder's layout)
  netroller harvest --index work/index.parquet --out work/cache-la --model llama-adapter:/ckpt/drivelm-la
  --drivelm work/nuscenes/drivelm_qa.json --tokens 192 --latents teacher-forced --gpus-per-worker 1

A re-run resumes: it re-hashes every committed shard and computes the shards without a valid commit record
or whose bytes no longer match their checksum (--no-verify skips the re-hash and trusts committed shards). A cache built with other settings is refused, naming the differing
field, unless --overwrite.
"""


def _harvest(
    index: Path = typer.Option(..., "--index", help="Sample index from `netroller prepare` (Parquet)."),
    out: Path = typer.Option(..., "--out", help="Cache folder to create or resume."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="GM: local save_pretrained folder or hub id, or a LLaMA-Adapter V2 folder (params.json, "
        "consolidated.00.pth, tokenizer.model, the adapter .pth, the CLIP .pt; or llama-adapter:DIR) "
        "(default: the embedded tiny random-weight GM).",
    ),
    tokens: int = typer.Option(1, "--tokens", help="T: last prompt token + up to T-1 generated tokens."),
    layers: str = typer.Option("all", "--layers", help="Layers to capture: all | 0,15,31 | -1."),
    shard_size: int = typer.Option(
        16, "--shard-size", help="Samples per shard (the unit of work and resume)."
    ),
    workers: int = typer.Option(1, "--workers", help="Ray actors; 0 runs in this process without Ray."),
    gpus_per_worker: float = typer.Option(
        0.0, "--gpus-per-worker", help="GPUs per actor (> 0 runs on CUDA)."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="Existing Ray cluster (default: a local Ray instance sized for this machine).",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Samples per GM pass inside a worker [default: 4 on CPU, 8 on CUDA]."
    ),
    gm_dtype: str | None = typer.Option(
        None,
        "--gm-dtype",
        help="Precision the GM computes in: bfloat16 | float16 | float32 [default: bfloat16 on CUDA, float32 on CPU].",
    ),
    attn_implementation: str = typer.Option(
        "sdpa",
        "--attn-implementation",
        help="GM attention: sdpa | eager | flash_attention_2 (needs flash-attn).",
    ),
    channel_order: str | None = typer.Option(
        None,
        "--channel-order",
        help="LLaMA-Adapter GMs: camera images in bgr (the authors' OpenCV order; the default) or rgb.",
    ),
    prompt_format: str = typer.Option(
        "auto",
        "--prompt-format",
        help="chat (the processor's chat template, cameras named) | alpaca (the authors' LLaMA-Adapter format) | "
        "auto (chat when the processor has a template).",
    ),
    latents: str = typer.Option(
        "generated",
        "--latents",
        help="generated (the GM answers) | teacher-forced (it reads each sample's DriveLM answer; needs --drivelm).",
    ),
    decode: str = typer.Option("greedy", "--decode", help="Generated answers: greedy | sample."),
    temperature: float = typer.Option(0.1, "--temperature", help="Sampling temperature (the authors' 0.1)."),
    top_p: float = typer.Option(0.75, "--top-p", help="Sampling nucleus mass in (0, 1] (the authors' 0.75)."),
    questions: str = typer.Option(
        "one",
        "--questions",
        help="DriveLM questions per sample, one cache row each: one (its first planning question) | per-category "
        "| all; training draws one per sample per epoch, eval reads the first (needs --drivelm unless one).",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Sampling seed; each sample draws from its own generator seeded by it and its token.",
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Prompt template text (default: the built-in driving question)."
    ),
    drivelm: Path | None = typer.Option(None, "--drivelm", help="DriveLM QA JSON with per-sample questions."),
    splits: str = typer.Option("train,val", "--splits", help="Comma list of index splits to harvest."),
    dtype: str = typer.Option("float16", "--dtype", help="Cache dtype: float16 | float32 | bfloat16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a cache built with other settings."),
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="Re-hash all committed shards first and recompute damaged ones (default); "
        "--no-verify trusts committed shards after the cheap record-and-size check.",
    ),
) -> None:
    # Imported here so that `netroller --help` and other commands do not pay for torch and transformers.
    from netroller.stages.harvest import HarvestConfig, harvest

    cfg = HarvestConfig(
        index=index,
        out=out,
        model=model,
        tokens=tokens,
        layers=layers,
        dtype=dtype,  # type: ignore[arg-type]  # HarvestConfig checks it (ConfigError naming the value)
        prompt=prompt,
        drivelm=drivelm,
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
        shard_size=shard_size,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        ray_address=ray_address,
        batch_size=batch_size,
        gm_dtype=gm_dtype,  # type: ignore[arg-type]  # checked by the GM loader (ConfigError naming it)
        attn_implementation=attn_implementation,  # type: ignore[arg-type]
        prompt_format=prompt_format,  # type: ignore[arg-type]
        channel_order=channel_order,
        latents=latents,  # type: ignore[arg-type]
        decode=decode,  # type: ignore[arg-type]
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        questions=questions,  # type: ignore[arg-type]
        overwrite=overwrite,
        verify=verify,
    )
    path = harvest(cfg)
    typer.echo(f"cache: {path}")


def register(app: typer.Typer) -> None:
    app.command(
        "harvest",
        help="Run the GM once over every indexed sample and cache its hidden states (Zarr shards, resumable).",
        epilog=_EPILOG,
    )(_harvest)
