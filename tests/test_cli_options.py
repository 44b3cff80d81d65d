"""CLI options generated from the config dataclasses: every option of train, harvest and eval carries its
field's default and docstring; the generator's type mapping; `--loader-workers`."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click
import pytest
import typer
from typer.testing import CliRunner

from netroller.cli.main import app, main
from netroller.cli.options import Flag, field_docs, options, with_options
from netroller.stages.evaluate import EvalConfig
from netroller.stages.finetune import NetRollerConfig, finetune_c1
from netroller.stages.harvest import HarvestConfig
from netroller.stages.train import TrainConfig, default_loader_workers

CONFIGS = {"train": (TrainConfig, NetRollerConfig), "harvest": (HarvestConfig,), "eval": (EvalConfig,)}
# Options that default to "not given" because the NetRoller fine-tune has its own default (finetune_c1).
UNSET = {"train": {"epochs", "lr"}}
# Options that are no config field: --authors names a recipe (finetune.AUTHORS_RECIPES) that builds both.
NOT_FIELDS = {"train": {"authors"}}


def _command(name: str) -> click.Command:
    group = typer.main.get_group(app)
    return group.get_command(click.Context(group), name)


def _cli_default(value):
    if isinstance(value, enum.Enum):
        return value.value
    return ",".join(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_option_has_its_fields_default_and_docstring(name):
    fields = {f.name: (cls, f) for cls in CONFIGS[name] for f in dataclasses.fields(cls)}
    params = [p for p in _command(name).params if p.name != "help" and p.name not in NOT_FIELDS.get(name, ())]
    assert params and all(p.name in fields for p in params), [p.name for p in params if p.name not in fields]
    for p in params:
        cls, f = fields[p.name]
        want = None if p.name in UNSET.get(name, ()) else _cli_default(f.default)
        if f.default is dataclasses.MISSING:
            assert p.required, p.name
        else:
            assert p.default == want, f"--{p.name}: {p.default!r} != {cls.__name__}.{p.name} = {want!r}"
        assert p.help.startswith(field_docs(cls)[p.name][:40]), p.name


def test_options_the_fine_tune_changes_name_both_defaults():
    c1 = finetune_c1(index=Path("i"), out=Path("o"))
    helps = {p.name: p.help for p in _command("train").params}
    assert f"Default 1; NetRoller runs (finetune_c1) {c1.epochs}." in helps["epochs"]
    assert f"NetRoller runs (finetune_c1) {c1.lr}." in helps["lr"]


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, kw_only=True)
class Toy:
    """A config with one field of each kind the generator maps."""

    path: Path
    """Where."""
    count: int = 3
    """How many [of them]."""
    colour: Colour = Colour.RED
    """Which colour."""
    kind: Literal["a", "b"] = "a"
    """Which kind."""
    names: tuple[str, ...] = ("x", "y")
    """Which names."""
    fast: bool = False
    """Go fast."""
    check: bool = True
    """Check first."""
    limit: int | None = None
    """At most this many."""


def _toy_app(**flags):
    got = {}
    cmd = with_options(
        options(Toy, "path", "count", "colour", "kind", "names", "fast", "check", "limit", **flags)
    )

    def toy(toy: dict) -> None:
        got.update(toy)

    app = typer.Typer()
    app.command()(cmd(toy))
    return app, got


def test_generated_options_map_each_field_kind():
    app, got = _toy_app()
    result = CliRunner().invoke(
        app, ["--path", "p", "--colour", "blue", "--names", "u, v", "--fast", "--no-check"]
    )
    assert result.exit_code == 0, result.output
    assert got == {
        "path": Path("p"),
        "count": 3,
        "colour": "blue",
        "kind": "a",
        "names": ("u", "v"),
        "fast": True,
        "check": False,
        "limit": None,
    }
    assert Toy(**got).names == ("u", "v")


def test_generated_help_is_the_docstring_with_choices_and_brackets_kept():
    app, _ = _toy_app()
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "How many [of them]." in out and "red|blue" in out and "a|b" in out and "--no-check" in out


def test_a_commands_own_options_are_kept_beside_the_generated_ones():
    got = {}

    @with_options(options(Toy, "path"))
    def toy(toy: dict, loud: bool = typer.Option(False, "--loud")) -> None:
        got.update(toy, loud=loud)

    app = typer.Typer()
    app.command()(toy)
    assert CliRunner().invoke(app, ["--path", "p", "--loud"]).exit_code == 0
    assert got == {"path": Path("p"), "loud": True}


def test_an_unset_option_leaves_the_field_to_the_config():
    got = {}

    @with_options(options(Toy, "path", Flag("count", unset=True, note="Default 3.")))
    def toy(toy: dict) -> None:
        got.update(toy)

    app = typer.Typer()
    app.command()(toy)
    assert CliRunner().invoke(app, ["--path", "p"]).exit_code == 0
    assert got == {"path": Path("p")}


def test_field_docs_reads_the_string_below_each_field():
    assert field_docs(Toy)["count"] == "How many [of them]."
    assert field_docs(TrainConfig)["num_workers"].startswith("DataLoader processes per training process")


def test_an_option_for_a_missing_field_is_refused():
    with pytest.raises(TypeError, match="Toy has no field 'speed'"):
        options(Toy, "speed")


def test_default_loader_workers_leave_a_core_to_each_training_process(monkeypatch):
    import os

    for cpus, processes, want in [(1, 1, 0), (2, 1, 1), (8, 1, 4), (8, 4, 1), (8, 8, 0), (64, 2, 4)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert default_loader_workers(processes) == want, (cpus, processes)


def test_cli_loader_workers_reach_the_train_config(vad_index, tmp_path):
    args = ["train", "--index", str(vad_index), "--max-samples", "2", "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "a"), "--loader-workers", "0"]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    given = json.loads((tmp_path / "a" / "train_config.json").read_text())
    default = json.loads((tmp_path / "b" / "train_config.json").read_text())
    assert given["num_workers"] == 0 and default["num_workers"] is None
