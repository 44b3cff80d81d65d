"""The `netroller` console script.

Examples:
    netroller data synth --out work/nuscenes
    netroller prepare --dataroot work/nuscenes --version v1.0-mini --out work/index.parquet
    netroller harvest --index work/index.parquet --out work/cache
    netroller train --index work/index.parquet --out work/runs/baseline
    netroller eval --run work/runs/baseline --index work/index.parquet

Every command module exposes `SUMMARY` (its line in `netroller --help`) and `register(app)`, called only
when that command runs or shows its own help: train, harvest and eval generate their options from config
dataclasses whose modules import torch, which `netroller --help` and `netroller cache info` need not pay for.
Errors the project raises on purpose (`NetrollerError`) become one line on stderr and exit code 2, with the
traceback only under `--debug`.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer
from typer.core import TyperGroup

from netroller.errors import NetrollerError

# Command name -> its module, in the order `netroller --help` lists them.
COMMANDS = {
    "prepare": "netroller.cli.prepare_cmd",
    "harvest": "netroller.cli.harvest_cmd",
    "train": "netroller.cli.train_cmd",
    "eval": "netroller.cli.eval_cmd",
    "report": "netroller.cli.report_cmd",
    "pipeline": "netroller.cli.pipeline_cmd",
    "data": "netroller.cli.data_cmd",
    "gm": "netroller.cli.gm_cmd",
    "cache": "netroller.cli.cache_cmd",
    "vad": "netroller.cli.vad_cmd",
}


class _Commands(TyperGroup):
    """The root group: a command is registered (its options built) only when it is the one invoked; the
    root help lists each command's SUMMARY."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name])
        if self._listing:
            return click.Command(name, short_help=module.SUMMARY)
        sub = typer.Typer()
        module.register(sub)
        return typer.main.get_group(sub).get_command(ctx, name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    cls=_Commands,
    name="netroller",
    help="NetRoller: harvest a VLM's hidden states once into a verified cache, then train and evaluate VAD + the NetRoller adapter from it.",
    epilog=(
        "Examples:\n\n\b\n"
        "  netroller data synth --out work/nuscenes\n"
        "  netroller prepare --dataroot work/nuscenes --version v1.0-mini --out work/index.parquet\n"
        "  netroller harvest --index work/index.parquet --out work/cache --tokens 4\n"
        "  netroller train --index work/index.parquet --out work/runs/baseline --epochs 6\n"
        "  netroller train --index work/index.parquet --cache work/cache --init work/runs/baseline "
        "--mode bias --shift query --out work/runs/bias-query\n"
        "  netroller eval --run work/runs/bias-query --index work/index.parquet --cache work/cache\n"
        "  netroller report work/runs/baseline work/runs/bias-query\n"
        "  netroller pipeline            # all of the above on the embedded defaults\n"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    _state["debug"] = debug


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 a NetrollerError, 1 anything unexpected)."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=argv, standalone_mode=False)
    except NetrollerError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        return 2
    except typer.Exit as ex:
        return ex.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as err:
        # Usage errors (typer's ClickException: bad option, missing argument) print their own message.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            return err.exit_code
        if debug:
            raise
        typer.echo(
            f"error: unexpected {type(err).__name__}: {err} (re-run with --debug for the traceback)", err=True
        )
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
