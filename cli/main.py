"""The `netroller` console script.

Examples:
    netroller data synth --out work/nuscenes
    netroller prepare --dataroot work/nuscenes --version v1.0-mini --out work/index.parquet
    netroller harvest --index work/index.parquet --out work/cache
    netroller train --index work/index.parquet --out work/runs/baseline
    netroller eval --run work/runs/baseline --index work/index.parquet

Every command module exposes `register(app)`; errors the project raises on purpose
(`NetrollerError`) become one line on stderr and exit code 2, with the traceback only under `--debug`.
"""

from __future__ import annotations

import importlib
import sys

import typer

from netroller.errors import NetrollerError

# Command modules, each with `register(app: typer.Typer) -> None`.
_COMMAND_MODULES = (
    "netroller.cli.data_cmd",
    "netroller.cli.prepare_cmd",
    "netroller.cli.gm_cmd",
    "netroller.cli.harvest_cmd",
    "netroller.cli.cache_cmd",
    "netroller.cli.vad_cmd",
    "netroller.cli.train_cmd",
    "netroller.cli.eval_cmd",
    "netroller.cli.report_cmd",
    "netroller.cli.pipeline_cmd",
)

app = typer.Typer(
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


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


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
