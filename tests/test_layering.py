"""The stages stack in the order data flows, and nothing imports upward.

Each package's `__init__` docstring says what it may import ("May import:
..."); this test reads those lines and checks every import of every module
of the package against them (function-level imports included), and that a
package may import only packages below it in `ORDER`.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tf_bignas"
ORDER = ("common", "space", "model", "data", "run", "train", "search", "export", "latency", "chain")


def _allowed(package: str) -> set[str]:
    doc = importlib.import_module(f"tf_bignas.{package}").__doc__ or ""
    match = re.search(r"May import:(.*?)(?:\n\s*\n|$)", doc, re.S)
    assert match, f"tf_bignas/{package}/__init__.py does not say what it may import"
    text = match.group(1)
    if "every other package" in text:
        return set(ORDER) - {package}
    text = text.split("(")[0]  # "(not `tf_bignas.search`: ...)" names what it may not
    return set(re.findall(r"`tf_bignas\.([a-z_]+)`", text))


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tf_bignas" and len(parts) > 1:
                out.add(parts[1])
    return out


@pytest.mark.parametrize("package", ORDER)
def test_a_package_imports_only_what_its_init_allows_and_nothing_above_it(package):
    allowed = _allowed(package)
    above = set(ORDER[ORDER.index(package) + 1 :])
    assert not allowed & above, f"{package} may import packages above it: {allowed & above}"
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) - allowed - {package}
        if bad:
            wrong[str(path.relative_to(ROOT.parent))] = sorted(bad)
    assert not wrong, f"imports outside 'May import' of tf_bignas/{package}: {wrong}"


def test_every_package_is_in_the_order():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(ORDER)


def test_the_public_api_names_resolve_and_import_lazily():
    import subprocess
    import sys

    code = (
        "import sys, tf_bignas as tb; assert 'tensorflow' not in sys.modules; "
        "print(sorted(n for n in tb.__all__ if getattr(tb, n) is not None))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import tf_bignas

    assert proc.stdout.strip() == str(sorted(tf_bignas.__all__))
    with pytest.raises(AttributeError, match="has no attribute 'nope'; it exports"):
        tf_bignas.nope  # noqa: B018
