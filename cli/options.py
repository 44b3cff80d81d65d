"""Typer options generated from config dataclasses: an option's default is its field's default and its help
is the field's docstring, so a command restates neither.

    TRAIN = options(TrainConfig, "index", "out", Flag("workers", "--num-workers"))

    @app.command("train")
    @with_options(TRAIN)
    def train_command(train: dict) -> None:   # train: {field name: value given or defaulted}
        run(TrainConfig(**train))

Field types map onto option types: `X | None` is an optional X; a `Literal` or an `Enum` is a string whose
choices are shown as its metavar (the config's `__post_init__` checks it and names the field); a
`tuple[str, ...]` is a comma list; a bool is a flag (`--x` when it defaults to False, `--x/--no-x` when True).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

_OPTION_TYPES = (bool, int, float, str, Path)
_METAVAR_WIDTH = 14


@dataclass(frozen=True)
class Flag:
    """One field as an option; by default `--field-name`, its default and its docstring."""

    field: str
    flag: str | None = None
    """The option's name when it is not `--field-name`."""
    note: str = ""
    """Appended to the field's docstring in the help (what the command adds, e.g. when it applies)."""
    envvar: str | None = None
    """An environment variable that gives the value when the option is not."""
    unset: bool = False
    """The option defaults to "not given" and the field is left out, so that the config, or the recipe the
    command builds it with, decides (the note should say what each gives)."""


@dataclass(frozen=True)
class OptionGroup:
    """The options of one config class, passed to the command as one dict named `name`."""

    name: str
    config: type
    flags: tuple[Flag, ...]
    panel: str | None = None


def options(
    config: type, *fields: str | Flag, name: str | None = None, panel: str | None = None
) -> OptionGroup:
    """The options for `fields` of the dataclass `config` (a field given by name takes its defaults)."""
    flags = tuple(f if isinstance(f, Flag) else Flag(f) for f in fields)
    known = {f.name for f in dataclasses.fields(config)}
    for f in flags:
        if f.field not in known:
            raise TypeError(f"{config.__name__} has no field {f.field!r}")
    return OptionGroup(name or config.__name__.lower(), config, flags, panel)


def field_docs(config: type) -> dict[str, str]:
    """Each field's docstring (the string literal right below it in the class body), as one paragraph."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(config)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _escape(text: str) -> str:
    try:
        from rich.markup import escape
    except ImportError:  # typer without rich prints help as plain text
        return text
    return escape(text)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _choices(tp: Any) -> list[str] | None:
    if typing.get_origin(tp) is typing.Literal:
        return [str(a) for a in typing.get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [str(m.value) for m in tp]
    return None


def _is_str_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple and typing.get_args(tp) == (str, ...)


@dataclass(frozen=True)
class _Param:
    """One generated parameter: its typer option, and how its value goes back into the config."""

    parameter: inspect.Parameter
    group: str
    field: str
    unset_is_default: bool  # a None value means "not given": leave the field out
    comma_list: bool


def _param(group: OptionGroup, flag: Flag, hints: dict, docs: dict) -> _Param:
    field = next(f for f in dataclasses.fields(group.config) if f.name == flag.field)
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = ...  # required
    tp, optional = _unwrap_optional(hints[flag.field])
    name = flag.flag or "--" + flag.field.replace("_", "-")
    metavar, comma, note = None, False, flag.note
    if choices := _choices(tp):
        tp, metavar = str, "|".join(choices)
        if len(metavar) > _METAVAR_WIDTH:  # a wide column would squeeze every help text beside it
            metavar = "CHOICE"
            if not all(c in docs.get(flag.field, "") for c in choices):
                note = " ".join(t for t in (f"One of {', '.join(choices)}.", note) if t)
        default = default.value if isinstance(default, enum.Enum) else default
    elif _is_str_tuple(tp):
        tp, comma, metavar = str, True, "A,B"
        default = ",".join(default) if isinstance(default, tuple) else default
    elif tp not in _OPTION_TYPES:
        raise TypeError(f"{group.config.__name__}.{flag.field}: no option type for {hints[flag.field]}")
    unset = flag.unset and default is not None
    if unset:
        default, optional = None, True
    decls = [name]
    if tp is bool and default is True:
        decls = [f"{name}/--no-{name.removeprefix('--')}"]
    # Escaped: typer's rich help would read "[default: 1]" in a docstring as markup and drop it.
    help_text = _escape(" ".join(t for t in (docs.get(flag.field, ""), note) if t))
    option = typer.Option(
        default,
        *decls,
        help=help_text,
        metavar=metavar,
        show_default=not unset,
        envvar=flag.envvar,
        rich_help_panel=group.panel,
    )
    annotation = (tp | None) if optional else tp
    parameter = inspect.Parameter(
        flag.field, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )
    return _Param(parameter, group.name, flag.field, unset, comma)


def with_options(*groups: OptionGroup) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking one dict per group (by the group's name) with the groups' options. Its
    other parameters (typer options of their own, for what is no config field) are kept as they are."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        params: list[_Param] = []
        for group in groups:
            hints = typing.get_type_hints(group.config)
            docs = field_docs(group.config)
            params += [_param(group, flag, hints, docs) for flag in group.flags]
        hints = typing.get_type_hints(func)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(name, p.annotation))
            for name, p in inspect.signature(func).parameters.items()
            if name not in {g.name for g in groups}
        ]
        names = [p.parameter.name for p in params] + [p.name for p in own]
        if len(set(names)) != len(names):
            raise TypeError(f"{func.__name__}: two options of the same name: {names}")

        def command(**values: Any) -> Any:
            given: dict[str, Any] = {g.name: {} for g in groups}
            for p in params:
                value = values[p.parameter.name]
                if p.unset_is_default and value is None:
                    continue
                if p.comma_list and isinstance(value, str):
                    value = tuple(s.strip() for s in value.split(",") if s.strip())
                given[p.group][p.field] = value
            return func(**given, **{p.name: values[p.name] for p in own})

        signature = [p.parameter for p in params] + own
        command.__name__, command.__qualname__ = func.__name__, func.__qualname__
        command.__doc__, command.__module__ = func.__doc__, func.__module__
        command.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in signature}
        return command

    return decorate
