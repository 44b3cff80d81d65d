"""`netroller harvest`: run the GM over the index once and write its hidden states to a latent cache.

Every option is a field of HarvestConfig (netroller.stages.harvest), with that field's default and docstring.
"""

from __future__ import annotations

import typer

SUMMARY = "Run the GM once over every indexed sample and cache its hidden states (Zarr shards, resumable)."

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


def register(app: typer.Typer) -> None:
    from netroller.cli.options import Flag, options, with_options
    from netroller.stages.harvest import DEFAULT_BATCH, HarvestConfig, harvest

    per_device = ", ".join(f"{n} on {device}" for device, n in DEFAULT_BATCH.items())
    harvest_options = options(
        HarvestConfig,
        "index",
        "out",
        "model",
        "tokens",
        "layers",
        "shard_size",
        "workers",
        "gpus_per_worker",
        Flag("ray_address", envvar="RAY_ADDRESS"),
        Flag("batch_size", note=f"Default: {per_device}."),
        "gm_dtype",
        "attn_implementation",
        "channel_order",
        "prompt_format",
        "latents",
        "decode",
        "temperature",
        "top_p",
        Flag("questions", note="Eval reads the first; needs --drivelm unless one."),
        "seed",
        "prompt",
        "drivelm",
        "splits",
        "dtype",
        "overwrite",
        "verify",
        name="cfg",
    )

    @app.command("harvest", help=SUMMARY, epilog=_EPILOG)
    @with_options(harvest_options)
    def harvest_command(cfg: dict) -> None:
        typer.echo(f"cache: {harvest(HarvestConfig(**cfg))}")
