"""The packages form layers that read top-down: a module imports only from its own package or from packages
below it. Every import counts: at the top of a module, inside a function, under TYPE_CHECKING.

    netroller (the version), errors      what every layer raises
    storage                              the latent cache: schema, writer, reader, verify
    models                               the GM (loading, capture, prompts), VAD, the NetRoller adapter
    data                                 nuScenes through the devkit -> index, images, batches of model inputs
    metrics                              planning, detection, map scores; the report
    distributed                          process groups (ddp) and the Ray edge (ray_harvest)
    stages                               prepare, harvest, train, finetune, evaluate, report
    pipeline                             the recipes and the runner (`make pipeline`)
    cli                                  the typer commands
    bench                                `make bench`
    tools                                developer tools run from a checkout (`make chaos`), not in the wheel

`models` sits below `data` because the data layer builds the models' typed inputs (`Batch`, `VADTargets`);
`distributed` sits below `stages` because it runs their work without knowing it (the Ray edge is handed
the work-unit function).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("netroller", "errors"),
    ("storage",),
    ("models",),
    ("data",),
    ("metrics",),
    ("distributed",),
    ("stages",),
    ("pipeline",),
    ("cli",),
    ("bench",),
    ("tools",),
]
RANK = {pkg: rank for rank, group in enumerate(LAYERS) for pkg in group}
NOT_IN_WHEEL = {"tools"}
SKIP = {".venv", "tests", "work", "build", ".git"}

# Upward imports waiting for a change owned elsewhere: (module, imported module) -> why. Each must still
# exist (the test says when one can go).
# Upward imports allowed for now, with the reason; none left.
PENDING: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Dotted name without the `netroller.` prefix ("stages.train", "errors", "netroller" for the root)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if SKIP & set(rel.parts) or any(p.startswith(".") or p.endswith(".egg-info") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts) or "netroller"] = path
    return found


def _package(module: str) -> str:
    return module.split(".")[0]


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported project module without the prefix, line) for every import of `netroller...` in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "netroller":
                names = [f"netroller.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            if name == "netroller":
                out.append(("netroller", node.lineno))
            elif name.startswith("netroller."):
                out.append((name.removeprefix("netroller."), node.lineno))
    return out


MODULES = _modules()
IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_package_has_a_layer():
    packages = {_package(m) for m in MODULES}
    assert not packages - set(RANK), f"put these packages into LAYERS: {sorted(packages - set(RANK))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_package_above_its_own(module):
    src = _package(module)
    upward = [
        f"{module} (line {line}) imports netroller.{target}: {_package(target)} is above {src}"
        for target, line in IMPORTS[module]
        if RANK[_package(target)] > RANK[src] and (module, target) not in PENDING
    ]
    assert not upward, "\n".join(upward)


def test_pending_upward_imports_still_exist():
    gone = [pair for pair in PENDING if pair[1] not in {t for t, _ in IMPORTS.get(pair[0], [])}]
    assert not gone, f"no longer imported, remove from PENDING: {gone}"


def test_project_modules_are_imported_absolutely_through_the_namespace():
    """What the layer check reads: no `import storage`, no `from . import x` (style rule 10)."""
    bare = {pkg for group in LAYERS for pkg in group} - {"netroller"}
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.append(f"{module} (line {node.lineno}): relative import")
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            found += [f"{module} (line {node.lineno}): import {n}" for n in names if n.split(".")[0] in bare]
    assert not found, "import these as netroller.<package>.<module>:\n" + "\n".join(found)


def test_the_wheel_ships_every_layer_but_the_tools():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    shipped = {p.split(".")[1] if "." in p else "netroller" for p in packages}
    assert shipped == set(RANK) - NOT_IN_WHEEL - {"errors"}
