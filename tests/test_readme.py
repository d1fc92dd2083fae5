"""README.md names only programs, flags and configs that exist, and starts with two set-up commands.

Commands are read from fenced code blocks and from inline code spans. In each
command (split at ``&&``, ``;`` and ``|``), ``python -m MODULE`` must name a
runnable module: a project module (a file under ``pipelines/``, ``tools/``,
...) with a ``__main__`` guard, or an installed one (``venv``, ``pytest``).
Every ``--flag`` given to a project program must be one of its absl flags:
those its source (and the project modules it imports) define with
``flags.DEFINE_*``, found by parsing the source, plus absl's own flags.
``--config.a.b=V`` overrides must name a config flag, and, when the command
passes ``--config=configs/NAME.py``, a key that config has. A flag alone in an
inline code span (``--max_steps=N``) must belong to some program of the
project; flags of other binaries belong in a span or block that names the
binary. Every ``configs/NAME.py`` must exist (all-caps names are
placeholders).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import json
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
CONFIG_FLAG_DEFINERS = ("DEFINE_config_file", "DEFINE_config_dict", "DEFINE_config_dataclass")
BOOL_FLAG_DEFINERS = ("DEFINE_bool", "DEFINE_boolean")
SEPARATORS = ("&&", "||", ";", "|", "&")


@dataclasses.dataclass(frozen=True)
class Command:
    """One program invocation found in the README.

    Attributes:
        module: The module after ``python -m``.
        flags: The ``--name[=value]`` tokens given to it, without the dashes.
        text: The command line it came from (for messages).
    """

    module: str
    flags: tuple[str, ...]
    text: str


@dataclasses.dataclass(frozen=True)
class ProgramFlags:
    """The absl flags a project program accepts.

    Attributes:
        names: Every flag name (absl's own flags included).
        bools: Boolean flags (also accepted as ``--noNAME``).
        configs: ml_collections config flags (accept ``--NAME.key=value``).
    """

    names: frozenset[str]
    bools: frozenset[str]
    configs: frozenset[str]


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _fenced_blocks(text: str) -> list[list[str]]:
    """The lines of each fenced code block, in order."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, "README.md has an unclosed code fence"
    return blocks


def _prose(text: str) -> str:
    """The README without its fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return "\n".join(out)


def _inline_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose(text))


def _command_lines(text: str) -> list[str]:
    """Lines of code blocks (with backslash continuations joined) and inline code spans."""
    lines = []
    for block in _fenced_blocks(text):
        joined = "\n".join(block).replace("\\\n", " ")
        lines += [line for line in joined.splitlines() if line.strip()]
    return lines + _inline_spans(text)


def _segments(line: str) -> list[list[str]]:
    """Shell words of each command of a line, split at &&, ||, ;, | and &."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError as e:  # Unbalanced quotes: not a shell line.
        raise AssertionError(f"README.md: cannot parse {line!r} as a shell line: {e}") from e
    segments, current = [], []
    for word in words:
        if word in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(word)
    return segments + [current]


def _commands(text: str) -> list[Command]:
    commands = []
    for line in _command_lines(text):
        if not re.search(r"\bpython[0-9.]*\s+-m\s", line):
            continue
        for words in _segments(line):
            for i, word in enumerate(words[:-2]):
                if re.fullmatch(r"(.*/)?python[0-9.]*", word) and words[i + 1] == "-m":
                    flags = []
                    for arg in words[i + 3 :]:
                        if arg == "--":
                            break
                        if arg.startswith("--"):
                            flags.append(arg[2:])
                    commands.append(Command(words[i + 2], tuple(flags), line))
                    break
    return commands


def _project_packages() -> frozenset[str]:
    return frozenset(p.parent.name for p in REPO_ROOT.glob("*/__init__.py"))


def _module_file(module: str) -> pathlib.Path | None:
    """The source file of a project module (or package), if it exists."""
    base = REPO_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _program_file(module: str) -> pathlib.Path | None:
    base = REPO_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__main__.py"):
        if path.is_file():
            return path
    return None


def _imported_project_files(tree: ast.Module, packages: frozenset[str]) -> list[pathlib.Path]:
    files = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in packages and (path := _module_file(name)) is not None:
                files.append(path)
    return files


def _flag_name(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    for keyword in call.keywords:
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


@functools.cache
def _absl_builtin_flags() -> frozenset[str]:
    """Flags every absl program accepts (--help, --flagfile, logging flags, ...)."""
    code = (
        "import json; from absl import app, flags, logging; app.define_help_flags(); "
        "print(json.dumps(sorted(flags.FLAGS)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return frozenset(json.loads(proc.stdout))


@functools.cache
def _program_flags(module: str) -> ProgramFlags:
    """Flags of a project program, from the DEFINE_* calls of it and the modules it imports."""
    packages = _project_packages()
    names, bools, configs = set(), set(), set()
    todo, seen = [_program_file(module)], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            definer = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if not definer.startswith("DEFINE"):
                continue
            name = _flag_name(node)
            assert name is not None, f"{path}:{node.lineno}: flag name is not a string literal"
            names.add(name)
            if definer in BOOL_FLAG_DEFINERS:
                bools.add(name)
            if definer in CONFIG_FLAG_DEFINERS:
                configs.add(name)
        todo += _imported_project_files(tree, packages)
    return ProgramFlags(
        frozenset(names) | _absl_builtin_flags(), frozenset(bools), frozenset(configs)
    )


def _load_config(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"readme_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _flag_errors(command: Command, flags: ProgramFlags) -> list[str]:
    """What is wrong with the flags of one command (empty when all exist)."""
    errors = []
    values = dict(f.split("=", 1) if "=" in f else (f, "") for f in command.flags)
    for flag in command.flags:
        name = flag.split("=", 1)[0]
        base, _, key = name.partition(".")
        if key:
            if base not in flags.configs:
                errors.append(f"--{name}: {base!r} is not a config flag of {command.module}")
                continue
            config_file = values.get(base, "")
            if (REPO_ROOT / config_file).is_file() and re.fullmatch(
                r"configs/[a-z0-9_]+\.py", config_file
            ):
                config = _load_config(REPO_ROOT / config_file)
                node = config
                for part in key.split("."):
                    if part not in node:
                        errors.append(f"--{name}: {config_file} has no key {key!r}")
                        break
                    node = node[part]
        elif name not in flags.names and not (name.startswith("no") and name[2:] in flags.bools):
            errors.append(f"--{name}: {command.module} has no such flag")
    return errors


# The tests.


def test_readme_commands_are_found():
    """The parser sees the README's commands (guards the tests below against vacuity)."""
    modules = {c.module for c in _commands(_readme())}
    assert {"venv", "pytest"} <= modules
    assert any(m.startswith("pipelines.") for m in modules), modules


def test_readme_modules_exist():
    packages = _project_packages()
    missing = []
    for command in _commands(_readme()):
        if command.module.split(".")[0] in packages:
            path = _program_file(command.module)
            if path is None:
                missing.append(f"{command.module} (no file; in {command.text!r})")
            elif '__name__ == "__main__"' not in path.read_text(encoding="utf-8"):
                missing.append(f"{command.module} ({path.name} has no __main__ guard)")
        elif importlib.util.find_spec(command.module) is None:
            missing.append(f"{command.module} (not installed; in {command.text!r})")
    assert not missing, "README.md names modules that cannot run: " + "; ".join(missing)


def _all_programs() -> list[str]:
    """Every project module with a __main__ guard (pipelines, tools, benchmarks, ...)."""
    programs = []
    for package in sorted(_project_packages()):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if '__name__ == "__main__"' in path.read_text(encoding="utf-8"):
                rel = path.relative_to(REPO_ROOT).with_suffix("")
                programs.append(".".join(rel.parts).removesuffix(".__main__"))
    return programs


def test_readme_flags_exist():
    packages = _project_packages()
    errors = []
    for command in _commands(_readme()):
        if command.module.split(".")[0] in packages and _program_file(command.module):
            errors += [
                f"{e} (in {command.text!r})"
                for e in _flag_errors(command, _program_flags(command.module))
            ]
    # A flag in an inline code span of its own (`--max_steps=N`): some program has it.
    # (Flags of other binaries belong in a span or block that names the binary.)
    programs = _all_programs()
    assert "pipelines.train" in programs
    for span in _inline_spans(_readme()):
        if span.startswith("--"):
            loose = Command("any program", (span[2:],), span)
            if all(_flag_errors(loose, _program_flags(m)) for m in programs):
                errors.append(f"{span}: no program of the project has this flag")
    assert not errors, "README.md names flags that do not exist:\n" + "\n".join(errors)


def test_readme_config_files_exist():
    names = set(re.findall(r"\bconfigs/([A-Za-z0-9_]+)\.py\b", _readme()))
    assert names, "README.md names no config file"
    missing = sorted(
        f"configs/{n}.py"
        for n in names
        if not n.isupper() and not (REPO_ROOT / "configs" / f"{n}.py").is_file()
    )
    assert not missing, f"README.md names config files that do not exist: {missing}"


def test_readme_starts_with_two_setup_commands():
    """The first two code blocks: main job, then tests; single lines on a fresh clone."""
    text = _readme()
    blocks = _fenced_blocks(text)
    assert len(blocks) >= 2
    main, tests = ([line for line in b if line.strip()] for b in blocks[:2])
    assert len(main) == 1 and len(tests) == 1, (main, tests)
    for line, requirements in ((main[0], "requirements.txt"), (tests[0], "requirements-dev.txt")):
        assert line.startswith("python3 -m venv .venv && . .venv/bin/activate && "), line
        assert f"pip install -r {requirements}" in line, line
        assert (REPO_ROOT / requirements).is_file()
    assert "-m pipelines." in main[0]
    assert re.search(r"python -m pytest\b.* tests$", tests[0]), tests[0]
    # No other set-up command: the section holding the two has no third code block,
    # and no later code block creates an environment.
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    setup = next(s for s in sections if _fenced_blocks(s))
    assert len(_fenced_blocks(setup)) == 2, "the set-up section holds other code blocks"
    assert not [b for b in blocks[2:] if any("-m venv" in line for line in b)]


def test_ci_extracts_the_readme_test_command():
    """.ci/run's own awk program finds the README's test command, verbatim."""
    script = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^cmd=\$\((awk .* README\.md)\)$", script, re.MULTILINE)
    assert match, ".ci/run no longer extracts its command with awk from README.md"
    proc = subprocess.run(
        ["bash", "-c", match.group(1)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    tests_command = [line for line in _fenced_blocks(_readme())[1] if line.strip()][0]
    assert proc.stdout.strip() == tests_command


@pytest.mark.parametrize("module", ["pipelines.train"])
def test_flag_parser_agrees_with_absl(module):
    """The source parser finds exactly the flags the project registers when the program is imported.

    (Libraries it imports, TensorFlow among them, may register flags of their
    own; those are left out on both sides.)
    """
    code = (
        f"import json, {module}; from absl import flags; "
        "print(json.dumps({m: [f.name for f in fs] "
        "for m, fs in flags.FLAGS.flags_by_module_dict().items()}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    by_module = json.loads(proc.stdout.strip().splitlines()[-1])
    packages = _project_packages()
    registered = {
        name for m, names in by_module.items() if m.split(".")[0] in packages for name in names
    }
    assert module in by_module and registered
    parsed = _program_flags(module)
    assert parsed.names - _absl_builtin_flags() == registered
    assert parsed.configs <= registered and parsed.bools <= registered


def test_checks_catch_bad_names():
    """The checks above fail on a README naming a missing module, flag, key or config."""
    flags = _program_flags("pipelines.train")
    good = Command(
        "pipelines.train",
        ("config=configs/quickstart.py", "config.train.epochs=1", "workdir=w", "helpfull"),
        "",
    )
    assert _flag_errors(good, flags) == []
    bad = Command(
        "pipelines.train",
        ("config=configs/quickstart.py", "config.train.epochz=1", "wrkdir=w", "conf.x=1"),
        "",
    )
    assert len(_flag_errors(bad, flags)) == 3
    text = (
        "```\npython -m pipelines.no_such_program --x=1 && python3 -m venv .venv\n```\n"
        "and `python -m tools.arch_info --json --nojson --archh=1`\n"
    )
    commands = _commands(text)
    assert [c.module for c in commands] == ["pipelines.no_such_program", "venv", "tools.arch_info"]
    assert _program_file("pipelines.no_such_program") is None
    arch_info = _flag_errors(commands[2], _program_flags("tools.arch_info"))
    assert arch_info == ["--archh: tools.arch_info has no such flag"]
