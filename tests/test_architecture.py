"""The import order written in docs/architecture.md is the code's: no module imports a later one, so no cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jreg"


def documented_order() -> list[str]:
    """The module list in docs/architecture.md's "Import order" block, lowest layer first."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"## Import order\n.*?```text\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no '## Import order' section with a ```text block"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip() and not line.startswith(" ")]


def sources() -> dict[str, tuple[str, bool]]:
    """``{module name: (source, is a package __init__)}`` for every module of jreg."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "_data" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path.read_text(), is_package)
    return out


def imports_of(name: str, source: str, is_package: bool) -> set[str]:
    """Every jreg module a source imports, at any level of the file (function-level imports too)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                found.add(target)
            else:  # from . import x, y: modules of the package
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "jreg":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "jreg")
    return found


def violations(modules: dict[str, tuple[str, bool]], order: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    wrong = []
    for name, (source, is_package) in modules.items():
        for target in imports_of(name, source, is_package):
            target = target if target in rank else target.rsplit(".", 1)[0]  # "from . import fit" names no module
            if target in rank and rank[target] >= rank[name]:
                wrong.append(f"{name} imports {target}")
    return sorted(wrong)


def test_every_module_is_in_the_documented_order():
    order = documented_order()
    assert len(order) == len(set(order)), "a module is listed twice"
    assert sorted(order) == sorted(sources()), "docs/architecture.md's import order and the package disagree"


def test_no_module_imports_a_later_layer():
    assert violations(sources(), documented_order()) == []


def test_the_check_catches_an_upward_import_and_a_cycle():
    modules, order = sources(), documented_order()
    upward = dict(modules)
    source, is_package = modules["jreg.losses"]
    upward["jreg.losses"] = (source + "\n\ndef f():\n    from .train import fit\n", is_package)
    assert violations(upward, order) == ["jreg.losses imports jreg.train"]
    cycle = dict(modules)
    source, is_package = modules["jreg.train.state"]
    cycle["jreg.train.state"] = (source + "\nfrom .step import make_update\n", is_package)
    assert violations(cycle, order) == ["jreg.train.state imports jreg.train.step"]
