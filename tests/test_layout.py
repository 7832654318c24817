"""The size rule of the house (``/work/shared/STYLE.md``): no production module over 600 lines,
no function over 60, unless :data:`ALLOWED` names it with the reason.

Read with ``ast`` (no import, no server): a function is measured from its ``def`` line to its
last line, decorators excluded; a method is ``Class.method``, a nested function
``outer.inner``. An allow-list entry that no longer applies fails too, so the list only
shrinks. ``pytest tests/test_layout.py -s`` prints the five largest modules and functions.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "modelplane",
    "schema",
    "resolvers",
    "services",
    "controllers",
    "storage",
    "integrations",
    "live",
)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60

ALLOWED: dict[str, str] = {
    # "path" for a module, "path:qualified.name" for a function: the reason it is larger.
}


@dataclass(frozen=True)
class Measured:
    key: str
    """``path`` or ``path:qualified.name``, as in :data:`ALLOWED`."""
    lines: int


def _modules() -> list[Path]:
    found: list[Path] = []
    for package in PACKAGES:
        root = REPO_ROOT / package
        if root.is_dir():
            found.extend(sorted(root.rglob("*.py")))
    return found


def _functions(tree: ast.AST, path: str, prefix: str = "") -> list[Measured]:
    found: list[Measured] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            end = node.end_lineno or node.lineno
            found.append(Measured(f"{path}:{name}", end - node.lineno + 1))
            found.extend(_functions(node, path, name + "."))
        elif isinstance(node, ast.ClassDef):
            found.extend(_functions(node, path, prefix + node.name + "."))
        else:
            found.extend(_functions(node, path, prefix))
    return found


def measure() -> tuple[list[Measured], list[Measured]]:
    """Every production module's and function's length in lines."""
    modules: list[Measured] = []
    functions: list[Measured] = []
    for file in _modules():
        path = file.relative_to(REPO_ROOT).as_posix()
        text = file.read_text(encoding="utf-8")
        modules.append(Measured(path, len(text.splitlines())))
        functions.extend(_functions(ast.parse(text, filename=path), path))
    return modules, functions


def _over() -> dict[str, int]:
    modules, functions = measure()
    over = {m.key: m.lines for m in modules if m.lines > MAX_MODULE_LINES}
    over.update({f.key: f.lines for f in functions if f.lines > MAX_FUNCTION_LINES})
    return over


def test_modules_and_functions_are_small_or_allowed() -> None:
    modules, functions = measure()
    report = []
    for title, items in (("modules", modules), ("functions", functions)):
        report.append(f"largest {title}:")
        largest = sorted(items, key=lambda m: m.lines, reverse=True)[:5]
        report.extend(f"  {item.lines:5d}  {item.key}" for item in largest)
    print("\n" + "\n".join(report))  # noqa: T201  the figures, with -s
    assert len(modules) > 50, "the walk found too few modules: is REPO_ROOT right?"
    unexplained = {key: lines for key, lines in _over().items() if key not in ALLOWED}
    assert not unexplained, (
        f"over {MAX_MODULE_LINES} lines (module) or {MAX_FUNCTION_LINES} (function); split "
        f"it, or add it to ALLOWED with the reason: {unexplained}"
    )


def test_every_allowance_is_still_needed() -> None:
    over = _over()
    stale = sorted(key for key in ALLOWED if key not in over)
    assert not stale, f"within the limits now (or gone): remove from ALLOWED: {stale}"


def test_every_allowance_has_a_reason() -> None:
    assert all(reason.strip() for reason in ALLOWED.values())
