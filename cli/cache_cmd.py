"""`netroller cache info|verify`: inspect and check a latent cache.

Examples:
    netroller cache info work/cache            # key, counts, size, failures
    netroller cache info work/cache --json     # the same as JSON
    netroller cache verify work/cache          # re-hash every shard; exit 1 and one line per damaged shard
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from netroller.storage.verify import cache_info, verify_cache

SUMMARY = "Inspect and verify a latent cache."

cache_app = typer.Typer(
    name="cache",
    help=SUMMARY
    + "\n\nExamples:\n\n  netroller cache info work/cache\n\n  netroller cache verify work/cache",
    no_args_is_help=True,
)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


@cache_app.command("info")
def info(
    cache: Path = typer.Argument(..., help="Cache folder (the one holding cache.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    show_failures: int = typer.Option(10, "--failures", help="How many failed samples to list."),
) -> None:
    """Show a cache's key, sample and shard counts, size on disk and failed samples.

    Example: netroller cache info work/cache
    """
    d = cache_info(cache)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    key, lay, shards = d["key"], d["layout"], d["shards"]
    typer.echo(f"cache        {d['path']}")
    typer.echo(f"model        {key['model']} (weights {key['model_hash'][:12]})")
    typer.echo(f"layers       {key['layers']} of {key['num_model_layers']}")
    typer.echo(f"shape        L={lay['layers']} T={lay['tokens']} H={lay['hidden_size']} {lay['dtype']}")
    typer.echo(f"dataset      {key['dataset_version']} splits {','.join(key['splits'])}")
    typer.echo(
        f"samples      {d['samples_committed']} of {d['samples']} committed, {d['samples_failed']} failed"
    )
    typer.echo(
        f"shards       {shards['committed']} of {shards['total']} committed "
        f"({lay['shard_size']} samples each), {shards['pending']} pending, {shards['damaged']} damaged"
    )
    typer.echo(f"size         {_size(d['bytes_on_disk'])} on disk, {_size(d['bytes_per_sample'])} per sample")
    for f in d["failures"][:show_failures]:
        typer.echo(f"failed       {f['sample_token']}: {f['reason']}")
    if len(d["failures"]) > show_failures:
        typer.echo(f"failed       ... and {len(d['failures']) - show_failures} more (--json lists all)")


@cache_app.command("verify")
def verify(cache: Path = typer.Argument(..., help="Cache folder (the one holding cache.json).")) -> None:
    """Re-hash every committed shard against its commit record. Exit 0 when clean, 1 when a shard is damaged.

    Example: netroller cache verify work/cache
    """
    report = verify_cache(cache)
    for shard, reason in report.damaged:
        typer.echo(
            f"damaged shard {shard} of {cache}: {reason}; re-running the same harvest (without --no-verify) "
            "recomputes it",
            err=True,
        )
    typer.echo(
        f"{cache}: {len(report.ok)} shards ok, {len(report.damaged)} damaged, {len(report.uncommitted)} not committed"
    )
    if report.damaged:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
