"""The BUILD files match the code: one target per Python file, in its package's
BUILD; deps cover first-party imports; the files are what .ci/update_build.py
writes from the code today."""

from __future__ import annotations

import ast
import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED_DIRS = ("tf_bignas", "tools", "pipelines", "configs", "benchmarks", "tests", "experiments")


def _generator():
    spec = importlib.util.spec_from_file_location("update_build", f"{ROOT}/.ci/update_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _targets() -> dict[str, dict]:
    """Label -> {srcs (repo paths), deps (labels), kind} over every BUILD file."""
    targets = {}
    for d in CHECKED_DIRS:
        for dirpath, _, names in os.walk(os.path.join(ROOT, d)):
            if "BUILD" not in names:
                continue
            pkg = os.path.relpath(dirpath, ROOT)
            text = open(os.path.join(dirpath, "BUILD"), encoding="utf-8").read()
            for m in re.finditer(r"(py_library|py_binary|py_test)\((.*?)\n\)", text, re.S):
                body = m.group(2)
                name = re.search(r'name = "([^"]+)"', body).group(1)
                srcs = re.findall(r'"([^"]+\.py)"', re.search(r"srcs = \[(.*?)\]", body, re.S)[1])
                block = re.search(r"deps = \[(.*?)\]", body, re.S)
                deps = re.findall(r'"((?://[^"]+)?:[^"]+)"', block.group(1)) if block else []
                label = f"//{pkg}:{name}"
                assert label not in targets, f"duplicate target {label}"
                targets[label] = {
                    "srcs": [f"{pkg}/{s}" for s in srcs],
                    "deps": [x if x.startswith("//") else f"//{pkg}{x}" for x in deps],
                    "kind": m.group(1),
                }
    return targets


def _python_files() -> set[str]:
    return set(_generator().files())


def _first_party_imports(path: str) -> set[str]:
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    files = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import module` needs the module, not pkg's __init__
            # (a dep on it would close a cycle: pkg/__init__ imports module).
            subs = [f"{node.module}.{a.name}" for a in node.names]
            modules = [n for n in subs if _generator()._is_module(n)]
            names = [node.module] + subs if len(modules) < len(subs) else modules
        for name in names:
            top = name.split(".")[0]
            if top not in ("tf_bignas", "supernet_testutil", "benchmarks", "tools", "pipelines"):
                continue
            base = name.replace(".", "/")
            if top == "supernet_testutil":
                base = "tests/supernet_testutil"
            for candidate in (base + ".py", base + "/__init__.py"):
                if candidate.endswith("__init__.py") and not candidate.startswith("tf_bignas"):
                    continue  # `from tools import cli`: only tf_bignas packages have targets
                if os.path.exists(os.path.join(ROOT, candidate)) and candidate != path:
                    files.add(candidate)
    return files


def test_every_python_file_has_exactly_one_target_in_its_package():
    owners: dict[str, list[str]] = {}
    for label, t in _targets().items():
        for src in t["srcs"]:
            owners.setdefault(src, []).append(label)
            assert label.startswith(f"//{os.path.dirname(src)}:"), (label, src)
    files = _python_files()
    assert sorted(files - set(owners)) == [], "files without a BUILD target"
    assert sorted(set(owners) - files) == [], "BUILD names files that do not exist"
    assert {f: o for f, o in owners.items() if len(o) > 1} == {}


def test_every_test_file_is_a_py_test_and_deps_exist():
    targets = _targets()
    for f in _python_files():
        if f.startswith("tests/") and os.path.basename(f).startswith("test_"):
            assert targets[f"//tests:{os.path.basename(f)[:-3]}"]["kind"] == "py_test", f
    for label, t in targets.items():
        for dep in t["deps"]:
            assert dep in targets, f"{label} depends on unknown target {dep}"


def test_deps_cover_first_party_imports():
    targets = _targets()

    def closure(label: str, seen: set[str]) -> set[str]:
        if label in seen:
            return set()
        seen.add(label)
        out = set(targets[label]["srcs"])
        for dep in targets[label]["deps"]:
            out |= closure(dep, seen)
        return out

    for label, t in targets.items():
        reachable = closure(label, set())
        for src in t["srcs"]:
            missing = _first_party_imports(src) - reachable
            assert not missing, f"target {label}: {src} imports {sorted(missing)} not in its deps"


def test_build_files_are_current():
    gen = _generator()
    by_pkg: dict[str, list[str]] = {}
    for f in gen.files():
        by_pkg.setdefault(os.path.dirname(f), []).append(f)
    for pkg, paths in by_pkg.items():
        want = gen.HEADER + "\n" + "\n\n".join(gen.target(p) for p in paths) + "\n"
        with open(os.path.join(ROOT, pkg, "BUILD"), encoding="utf-8") as f:
            assert f.read() == want, f"{pkg}/BUILD is stale: run python .ci/update_build.py"


def test_library_targets_depend_only_on_the_library_and_graph_is_acyclic():
    """Nothing in tf_bignas depends upward (on tools, pipelines, benchmarks, ...),
    and Bazel's dependency graph has no cycle."""
    targets = _targets()
    for label, t in targets.items():
        if label.startswith("//tf_bignas"):
            upward = [d for d in t["deps"] if not d.startswith("//tf_bignas")]
            assert upward == [], f"{label} depends outside the library: {upward}"
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(label: str, path: list[str]) -> None:
        if state.get(label) == 2:
            return
        assert state.get(label) != 1, f"dependency cycle: {' -> '.join(path + [label])}"
        state[label] = 1
        for dep in targets[label]["deps"]:
            visit(dep, path + [label])
        state[label] = 2

    for label in sorted(targets):
        visit(label, [])
