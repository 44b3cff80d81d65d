"""The `netroller` entry point: help with examples for every command, one-line errors, --debug."""

from __future__ import annotations

import pytest

from netroller.cli.main import main
from netroller.errors import MissingPathError

COMMANDS = [
    ["data", "synth"],
    ["prepare"],
    ["gm", "tiny"],
    ["harvest"],
    ["cache", "info"],
    ["cache", "verify"],
    ["train"],
    ["eval"],
    ["report"],
    ["pipeline"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_shows_an_example(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "netroller " + command[0] in out and "xample" in out


def test_root_help_lists_the_commands_with_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("prepare", "harvest", "train", "eval", "report", "pipeline", "data", "gm", "cache"):
        assert name in out
    assert "netroller pipeline" in out


def test_expected_errors_are_one_line_with_exit_2(tmp_path, capsys):
    code = main(["prepare", "--dataroot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "i.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "i.parquet").exists()


def test_debug_raises_the_error_with_its_traceback(tmp_path):
    with pytest.raises(MissingPathError, match="nowhere"):
        main(
            [
                "--debug",
                "prepare",
                "--dataroot",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "i.parquet"),
            ]
        )


def test_usage_error_names_the_option(capsys):
    assert main(["harvest", "--tokens", "many"]) == 2
    assert "--tokens" in capsys.readouterr().err
