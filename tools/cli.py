"""How every program in `pipelines/` and `tools/` ends on an expected error.

`run(main)` replaces `absl.app.run(main)`: an expected error (bad input: a
`ValueError`, including the library's `InvalidArchError`, `DataSourceError`
and `WorkdirError`, or an `OSError` such as a missing or unwritable path)
prints one line, ``PROGRAM: error: MESSAGE``, on stderr and exits with code 2;
the traceback is printed too under ``--verbose``. Anything else is a bug and
keeps its traceback. The `--verbose` flag is defined here, once, for every
program that imports this module.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

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
    print(f"{os.path.basename(sys.argv[0]) or 'tf_bignas'}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_EXPECTED)


def run(main: Callable[[list[str]], object]) -> None:
    """Runs an absl main, turning expected errors into one line and exit code 2.

    Args:
        main: The program's main(argv).
    """

    def wrapped(argv: list[str]) -> object:
        try:
            return main(argv)
        except EXPECTED_ERRORS as e:
            if _VERBOSE.value:
                traceback.print_exc()
            fail(str(e) or type(e).__name__)
        return None

    app.run(wrapped)
