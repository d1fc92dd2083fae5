"""How every program in `pipelines/` and `tools/` reads its flags and ends on an expected error.

`run(main)` replaces `absl.app.run(main)`: an expected error prints one line,
``PROGRAM: error: MESSAGE``, on stderr (control characters stripped) and
exits with code 2; the traceback is printed too under ``--verbose``. Expected
errors are

- bad flags: an unparsable or out-of-range value (``--max_steps=abc``), a
  missing required flag, a stray positional argument, an unknown config key
  (``--config.train.epoch=3``: the message names the key, the closest known
  one and the options of its section), a config file (``--config=FILE``)
  that is missing, does not parse or fails to build (the message names the
  file and its line); absl alone would exit 1, print its usage or a
  traceback for these;
- bad input found by the program: a `ValueError` (including the library's
  `InvalidArchError`, `DataSourceError`, `ConfigError` and `WorkdirError`),
  an `OSError` such as a missing or unwritable path, or `app.UsageError`;
- whatever else the program lists in `run(main, expected=(...))`, e.g. the
  training run's `NonFiniteLossError`.

Anything else is a bug and keeps its traceback. The `--verbose` flag is
defined here, once, for every program that imports this module. Programs
with a config file read it through `load_config`; a built-in config tree
(`DEFINE_config_dict`) is defined with ``sys_argv=known_overrides_argv(...)``,
so that both kinds of config flag report unknown keys the same way.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags
from ml_collections import ConfigDict
from ml_collections.config_flags import config_flags

from tf_bignas.common.text import clean

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "On an expected error, print the traceback as well as the one-line message."
)
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, app.UsageError)
EXIT_EXPECTED = 2


def _program() -> str:
    return os.path.basename(sys.argv[0]) or "tf_bignas"


def fail(message: object) -> None:
    """Ends the program with one line on stderr and exit code 2.

    Args:
        message: What is wrong and what is allowed (control characters and
            line breaks are removed).

    Raises:
        SystemExit: Always.
    """
    print(f"{_program()}: error: {clean(message, one_line=True)}", file=sys.stderr)
    sys.exit(EXIT_EXPECTED)


def positive_ints(flag: str, values: Sequence[str], example: str = "24,32") -> list[int]:
    """Parses a list flag of positive integers, naming the flag on an error.

    Args:
        flag: The flag's name, e.g. "--resolutions".
        values: The comma-separated parts (an absl list flag's value).
        example: A valid value, for the message.

    Returns:
        The integers.

    Raises:
        ValueError: If a part is not a positive integer, e.g. "--resolutions=abc:
            'abc' is not a positive integer; allowed: comma-separated positive
            integers, e.g. --resolutions=24,32".
    """
    out = []
    for text in values:
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = 0
        if value < 1:
            raise ValueError(
                f"{flag}={','.join(values)}: {text!r} is not a positive integer; allowed: "
                f"comma-separated positive integers, e.g. {flag}={example}"
            )
        out.append(value)
    return out


# ---- config flags: unknown keys, files that do not load ---------------------------------


def _leaves(tree: Mapping[str, Any] | ConfigDict, prefix: str = "") -> set[str]:
    """The dotted names of a config's options."""
    out: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, (Mapping, ConfigDict)):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def _overrides(argv: Sequence[str], name: str) -> list[str]:
    """The keys of the `--NAME.KEY=VALUE` (and `--noNAME.KEY`) arguments, in order."""
    pattern = re.compile(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)")
    return [m.group(1) for arg in argv[1:] if (m := pattern.match(arg))]


def _unknown_override(argv: Sequence[str], name: str, known: set[str]) -> str | None:
    """The message for the first `--NAME.KEY` override whose KEY is not in `known`."""
    for key in _overrides(argv, name):
        if key not in known and not any(k.startswith(f"{key}.") for k in known):
            from tf_bignas.run.schema import unknown_option_message  # only on an error

            return unknown_option_message(key, known, f"--{name}.{key}")
    return None


def _config_value(argv: Sequence[str], name: str) -> str | None:
    """The last value of `--NAME=FILE[:ARG]` (or `--NAME FILE[:ARG]`) in argv."""
    found = None
    for i, arg in enumerate(argv[1:], start=1):
        m = re.match(rf"^--?{re.escape(name)}(?:=(.*))?$", arg)
        if m:
            following = argv[i + 1] if i + 1 < len(argv) else ""
            found = m.group(1) if m.group(1) is not None else following
    return found


def _config_keys(flag: flags.Flag, argv: Sequence[str]) -> set[str] | None:
    """The option names a config flag's tree holds before overrides (None: unknown)."""
    if not isinstance(flag.parser, config_flags.ConfigFileFlagParser):
        value = flag.value
        return _leaves(value) if isinstance(value, ConfigDict) else None
    value = _config_value(argv, flag.name)
    if not value or not os.path.isfile(value.partition(":")[0]):
        return None
    try:
        config = config_flags.ConfigFileFlagParser(name=flag.name, lock_config=False).parse(value)
    except Exception:  # noqa: BLE001 - the file's own error is reported by _parse_flags
        return None
    return _leaves(config) if isinstance(config, ConfigDict) else None


def _config_flags() -> list[flags.Flag]:
    """The program's config flags (`config_flags.DEFINE_config_*`), each once."""
    found = {flags.FLAGS[name].name: flags.FLAGS[name] for name in flags.FLAGS}
    return [flag for flag in found.values() if config_flags.is_config_flag(flag)]


def _explain_unknown_override(argv: Sequence[str]) -> str | None:
    """A message for the first unknown config key on the command line, if there is one."""
    for flag in _config_flags():
        if not _overrides(argv, flag.name):
            continue
        known = _config_keys(flag, argv)
        if known is not None and (message := _unknown_override(argv, flag.name, known)):
            return message
    return None


def _chain(error: BaseException) -> list[BaseException]:
    """An exception and those it was raised from or while handling, outermost first."""
    out = [error]
    while (nxt := out[-1].__cause__ or out[-1].__context__) is not None and nxt not in out:
        out.append(nxt)
    return out


def _exception_text(error: BaseException) -> str:
    """`Type: message` on one line; a ConfigDict's quoted KeyError message unquoted."""
    text = str(error).strip()
    if isinstance(error, (KeyError, AttributeError)) and text[:1] in "'\"":
        try:
            text = str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            pass
    return clean(f"{type(error).__name__}: {text}" if text else type(error).__name__, True)


# A ConfigDict's missing key: "'trian'" and, when one is close, 'Did you mean "train" ...'.
_MISSING_KEY = re.compile(r"^\w+Error: '(\w+)'(?: Did you mean \"(\w+)\" instead of \"\w+\"\?)?$")


def _file_error_message(error: BaseException, where: str) -> str:
    """What a config file raised, as one line naming the file and line (`where`)."""
    text = _exception_text(error)
    missing = _MISSING_KEY.match(text)
    if isinstance(error, (KeyError, AttributeError)) and missing:
        close = f"; did you mean {missing.group(2)}?" if missing.group(2) else ""
        return f"unknown option or section {missing.group(1)} (from {where}){close}"
    return f"cannot load {where}: {text}"


def _explain_config_file_error(error: BaseException, argv: Sequence[str]) -> str | None:
    """ "cannot load --config=FILE, line N: Type: message" if a config file raised it."""
    for flag in _config_flags():
        if not isinstance(flag.parser, config_flags.ConfigFileFlagParser):
            continue
        path = (_config_value(argv, flag.name) or "").partition(":")[0]
        if not path:
            continue
        target = os.path.realpath(path)
        for e in _chain(error):
            if isinstance(e, SyntaxError) and e.filename:
                if os.path.realpath(e.filename) == target:
                    return f"cannot load --{flag.name}={path}: {e.msg} (line {e.lineno})"
            frames = [
                f for f in traceback.extract_tb(e.__traceback__)
                if os.path.realpath(f.filename) == target
            ]  # fmt: skip
            if frames:
                return _file_error_message(e, f"--{flag.name}={path}, line {frames[-1].lineno}")
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every failure turned into one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - flags, or a config file that raises while building
        if "--verbose" in argv or "--verbose=true" in [a.lower() for a in argv]:
            traceback.print_exc()
        message = _explain_unknown_override(argv) or _explain_config_file_error(e, argv)
        if message:
            fail(message)
        if isinstance(e, flags.Error):
            fail(str(e))
        if isinstance(e, SyntaxError):  # a config file (Python) that does not parse
            fail(f"cannot load {e.filename}: {e.msg} (line {e.lineno})")
        fail(f"while reading the flags: {_exception_text(e)}")
    return []  # not reached


def known_overrides_argv(name: str, default: ConfigDict) -> list[str]:
    """`sys.argv` without the `--NAME.KEY` overrides whose KEY `default` does not hold.

    config_flags applies the overrides of a built-in tree
    (`DEFINE_config_dict`) while the flag is defined, at import, where an
    unknown key raises with a traceback. Defined with
    ``sys_argv=known_overrides_argv(name, default)``, the flag leaves an
    unknown key to the flag parsing of `run`, which names it, the closest
    known one and the options of its section (one line, exit code 2).

    Args:
        name: The config flag's name, e.g. "config".
        default: Its tree (whose keys are the allowed options).

    Returns:
        The arguments for the flag's `sys_argv`.
    """
    known = _leaves(default)
    return [
        arg
        for i, arg in enumerate(sys.argv)
        if i == 0
        or not _overrides(["", arg], name)
        or not _unknown_override(["", arg], name, known)
    ]


def load_config(
    holder: flags.FlagHolder,
    check: Callable[[ConfigDict, str], None] | None = None,
) -> ConfigDict:
    """The config of a `--NAME=FILE` flag (`config_flags.DEFINE_config_file`), checked.

    Args:
        holder: The flag's holder.
        check: Called with the config and its origin ("--config=FILE"), e.g.
            to reject options that the schema does not hold.

    Returns:
        The config.

    Raises:
        ValueError: Naming the file if it is missing, fails to load or does not
            return a ConfigDict, or whatever `check` raises.
    """
    name = holder.name
    # ml_collections takes `path:arg` (an argument for get_config) and splits at the colon.
    path = flags.FLAGS[name].config_filename.partition(":")[0]
    if not os.path.isfile(path):
        raise ValueError(
            f"--{name}={path}: no such file; give a config file such as configs/quickstart.py"
        )
    try:
        config = holder.value
        config.keys()  # a config that failed to load raises on first use
    except Exception as e:  # noqa: BLE001 - whatever the user's file raised
        raise ValueError(f"--{name}={path}: cannot load it ({_exception_text(e)})") from e
    if not isinstance(config, ConfigDict):
        raise ValueError(
            f"--{name}={path}: get_config() returned a {type(config).__name__}, not a ConfigDict"
        )
    if check is not None:
        check(config, f"--{name}={path}")
    return config


def run(
    main: Callable[[list[str]], object],
    expected: tuple[type[BaseException], ...] = (),
    positional: bool = False,
) -> None:
    """Runs an absl main, turning expected errors into one line and exit code 2.

    Args:
        main: The program's main(argv).
        expected: More exception types that are expected outcomes, not bugs.
        positional: Whether the program takes positional arguments; if not, a
            stray one (e.g. a value after a space, ``--workdir DIR extra``) is
            an error naming it.
    """
    caught = EXPECTED_ERRORS + tuple(expected)

    def wrapped(argv: list[str]) -> object:
        try:
            if not positional and len(argv) > 1:
                raise app.UsageError(
                    f"unexpected argument {argv[1]!r}"
                    + (f" (and {len(argv) - 2} more)" if len(argv) > 2 else "")
                    + f": {_program()} takes only flags (--name=value); see --help"
                )
            return main(argv)
        except caught as e:
            if _VERBOSE.value:
                traceback.print_exc()
            fail(str(e) or type(e).__name__)
        return None

    app.run(wrapped, flags_parser=_parse_flags)
