"""How every program in `pipelines/` and `tools/` ends on an expected error.

`run(main)` replaces `absl.app.run(main)`: an expected error prints one line,
``PROGRAM: error: MESSAGE``, on stderr and exits with code 2; the traceback is
printed too under ``--verbose``. Expected errors are

- bad flags: an unparsable or out-of-range value (``--max_steps=abc``), a
  missing required flag, a config file (``--config=FILE``) that is missing,
  does not parse or fails to build (absl alone would exit 1 or print a
  traceback for these);
- bad input found by the program: a `ValueError` (including the library's
  `InvalidArchError`, `DataSourceError`, `ConfigError` and `WorkdirError`) or
  an `OSError` such as a missing or unwritable path;
- whatever else the program lists in `run(main, expected=(...))`, e.g. the
  training run's `NonFiniteLossError`.

Anything else is a bug and keeps its traceback. The `--verbose` flag is
defined here, once, for every program that imports this module.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags

_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "On an expected error, print the traceback as well as the one-line message."
)
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)
EXIT_EXPECTED = 2


def fail(message: str) -> None:
    """Ends the program with one line on stderr and exit code 2.

    Args:
        message: What is wrong and what is allowed.

    Raises:
        SystemExit: Always.
    """
    line = " ".join(str(message).split())  # one line, whatever the message holds
    print(f"{os.path.basename(sys.argv[0]) or 'tf_bignas'}: error: {line}", file=sys.stderr)
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


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every failure turned into one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    except SyntaxError as e:  # a config file (Python) that does not parse
        fail(f"cannot load {e.filename}: {e.msg} (line {e.lineno})")
    except Exception as e:  # noqa: BLE001 - a config file that raises while building
        if "--verbose" in argv or "--verbose=true" in [a.lower() for a in argv]:
            traceback.print_exc()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        fail(f"while reading the flags: {type(e).__name__}: {first}")
    return []  # not reached


def run(
    main: Callable[[list[str]], object], expected: tuple[type[BaseException], ...] = ()
) -> None:
    """Runs an absl main, turning expected errors into one line and exit code 2.

    Args:
        main: The program's main(argv).
        expected: More exception types that are expected outcomes, not bugs.
    """
    caught = EXPECTED_ERRORS + tuple(expected)

    def wrapped(argv: list[str]) -> object:
        try:
            return main(argv)
        except caught as e:
            if _VERBOSE.value:
                traceback.print_exc()
            fail(str(e) or type(e).__name__)
        return None

    app.run(wrapped, flags_parser=_parse_flags)
