"""Every import inside radvar/ and cli/ obeys the layer order of docs/design.md ("Layer map").

A module may import from its own layer or from a layer below it, never from one above.
The order is read from the table in docs/design.md §7 (one row per level, lowest
first, the modules of a level in backticks), so the doc and this test cannot drift.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"


def read_layers(text: str) -> list[set[str]]:
    """The module sets of the "Layer map" table, lowest level first."""
    section = re.search(r"^## \d+\. Layer map\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "docs/design.md has no '## N. Layer map' section"
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section.group(1), re.M)
    assert [int(level) for level, _ in rows] == list(range(len(rows))), "layer map levels must be 0, 1, 2, ..."
    return [set(re.findall(r"`([\w.]+)`", modules)) for _, modules in rows]


LAYERS = read_layers(DESIGN.read_text())
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def test_layer_map_is_well_formed():
    names = [name for layer in LAYERS for name in layer]
    assert len(names) == len(set(names)), "a module is listed at two levels"
    assert LAYERS[0] >= {"_version", "_atomic"} and LAYERS[-1] == {"cli"} and LAYERS[-2] == {"__init__"}
    assert all(LAYERS), "every level lists at least one module"


def _module_name(path: Path) -> tuple[str, str]:
    """(dotted module name, its package) for a file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("cli", "radvar_cli"):  # the folder cli/ installs as radvar_cli
        return "cli"
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute radvar/cli module) for every import in ``path``."""
    _, package = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            if full in ("radvar", "cli", "radvar_cli"):  # `from radvar import zoo` imports the submodule zoo
                found += [(node.lineno, f"{full}.{a.name}") for a in node.names]
            elif full.startswith(("radvar.", "cli.", "radvar_cli.")):
                found.append((node.lineno, full))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in ("radvar", "cli", "radvar_cli")]
    return found


FILES = sorted((ROOT / "radvar").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))


def test_every_top_level_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in (ROOT / "radvar").iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert tops - LEVEL.keys() == set()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    me = _layer(_module_name(path)[0])
    upward = []
    for line, target in _imports(path):
        other = _layer(target)
        if other == "__version__":  # `from radvar import __version__` names an attribute, not a layer
            other = "__init__"
        if LEVEL.get(other, -1) > LEVEL[me]:
            upward.append(f"line {line}: {target} (layer {other!r} is above {me!r})")
    assert upward == []


OUTSIDE = re.compile(r"\.\./shared|shared/" + "DESIGN|" + r"\bDESIGN(\.md|'s| §)")  # split so this line does not match


def test_no_reference_outside_the_repository():
    """Code and docs point at docs/design.md, never at developer notes a clone does not have."""
    texts = [p for folder in ("radvar", "cli", "docs", "benchmarks", "analyses", "tests")
             for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")] + [ROOT / "README.md"]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in texts
             for i, line in enumerate(p.read_text().splitlines(), 1) if OUTSIDE.search(line)]
    assert found == []
