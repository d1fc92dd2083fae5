"""BUILD matches the code: every Python file has a target, deps cover first-party imports."""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED_DIRS = ("tf_bignas", "tools", "pipelines", "configs", "benchmarks", "tests")


def _targets() -> dict[str, dict[str, list[str]]]:
    text = open(os.path.join(ROOT, "BUILD"), encoding="utf-8").read()
    targets = {}
    for match in re.finditer(r"(py_library|py_binary|py_test)\((.*?)\n\)", text, re.S):
        body = match.group(2)
        name = re.search(r'name = "([^"]+)"', body).group(1)
        srcs = re.findall(r'"([^"]+\.py)"', re.search(r"srcs = \[(.*?)\]", body, re.S).group(1))
        deps_block = re.search(r"deps = \[(.*?)\]", body, re.S)
        deps = re.findall(r'"(:[^"]+)"', deps_block.group(1)) if deps_block else []
        assert name not in targets, f"duplicate target {name}"
        targets[name] = {"srcs": srcs, "deps": [d[1:] for d in deps], "kind": match.group(1)}
    return targets


def _python_files() -> set[str]:
    found = set()
    for d in CHECKED_DIRS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                    if f == "__init__.py" and not rel.startswith("tf_bignas"):
                        continue  # empty package markers of the program folders
                    found.add(rel)
    return found


def _first_party_imports(path: str) -> set[str]:
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    files = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] not in ("tf_bignas", "supernet_testutil"):
                continue
            base = name.replace(".", "/")
            if name == "supernet_testutil":
                base = "tests/supernet_testutil"
            for candidate in (base + ".py", base + "/__init__.py"):
                if os.path.exists(os.path.join(ROOT, candidate)):
                    files.add(candidate)
    return files


def test_every_python_file_has_exactly_one_target():
    owners: dict[str, list[str]] = {}
    for name, t in _targets().items():
        for src in t["srcs"]:
            owners.setdefault(src, []).append(name)
    files = _python_files()
    assert sorted(files - set(owners)) == [], "files without a BUILD target"
    assert sorted(set(owners) - files) == [], "BUILD names files that do not exist"
    assert {f: o for f, o in owners.items() if len(o) > 1} == {}


def test_every_test_file_is_a_py_test_and_deps_exist():
    targets = _targets()
    for f in _python_files():
        if os.path.basename(f).startswith("test_"):
            name = os.path.basename(f)[:-3]
            assert targets[name]["kind"] == "py_test", name
    for name, t in targets.items():
        for dep in t["deps"]:
            assert dep in targets, f"{name} depends on unknown target :{dep}"


def test_deps_cover_first_party_imports():
    targets = _targets()

    def closure(name: str, seen: set[str]) -> set[str]:
        if name in seen:
            return set()
        seen.add(name)
        out = set(targets[name]["srcs"])
        for dep in targets[name]["deps"]:
            out |= closure(dep, seen)
        return out

    for name, t in targets.items():
        reachable = closure(name, set())
        for src in t["srcs"]:
            missing = _first_party_imports(src) - reachable
            assert not missing, f"target {name}: {src} imports {sorted(missing)} not in its deps"
