"""The longest functions of the code base, by lines (decorators and docstring included, tests excluded).

    python tools/longest_functions.py            # the 10 longest under the repository root
    python tools/longest_functions.py DIR -n 3   # another checkout, the 3 longest

A function nested in another counts on its own and inside its parent.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SKIP = {".venv", "tests", "work", "build", ".git"}


def functions(root: Path) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function and method under `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP & set(rel.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                found.append((node.end_lineno - start + 1, f"{rel}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("-n", type=int, default=10, help="how many to list")
    args = parser.parse_args()
    for lines, where in functions(args.root)[: args.n]:
        print(f"{lines:5d}  {where}")


if __name__ == "__main__":
    main()
