"""Text from files, folder names and devices, made safe to print and to render.

`clean` strips control characters (ESC, NUL, ...) from a message so a
device's raw output or a hostile file name cannot drive the terminal;
`md_code` and `md_text` put any string into Markdown so that it renders as
the same text (no raw HTML, no broken table); `html_text` does the same for
HTML.
"""

from __future__ import annotations

import html
import os
import re
import shlex

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&])")


def clean(text: object, one_line: bool = False) -> str:
    """`text` without control characters (tabs and newlines kept unless `one_line`).

    Args:
        text: Any value (converted with `str`).
        one_line: Newlines and tabs become spaces too.

    Returns:
        The printable text.
    """
    out = _CONTROL.sub("", str(text))
    if one_line:
        out = " ".join(out.split())
    return out


def md_text(text: object) -> str:
    """`text` as literal Markdown text: every Markdown and HTML character escaped.

    Args:
        text: Any value (converted with `str`).

    Returns:
        Markdown that renders as `text`, on one line (safe in a table cell).
    """
    return _MD_SPECIAL.sub(r"\\\1", clean(text, one_line=True))


def md_code(text: object) -> str:
    """`text` as a Markdown code span, whatever backticks it holds.

    Args:
        text: Any value (converted with `str`).

    Returns:
        A code span (fenced by more backticks than `text` has in a row, the
        CommonMark rule) whose content renders as `text`, except `|` (which
        would split a table cell, and cannot be escaped in a code span
        outside a table), replaced by the look-alike U+2502.
    """
    body = clean(text, one_line=True).replace("|", "\u2502")
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") or not body.strip() else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def html_text(text: object) -> str:
    """`text` escaped for HTML (quotes included), without control characters."""
    return html.escape(clean(text), quote=True)


def command_line(argv: list[str] | tuple[str, ...]) -> str:
    """A process's command as a user would type it again (`python -m pkg.mod ARGS`).

    Args:
        argv: The process's `sys.argv`.

    Returns:
        The command, shell-quoted; a script inside a package folder is shown
        as `python -m` of its module (as the README runs every program).
    """
    if not argv:
        return ""
    script, args = argv[0], list(argv[1:])
    parts = os.path.normpath(os.path.abspath(script)).split(os.sep)
    for top in ("pipelines", "tools", "experiments", "benchmarks"):
        if top in parts[:-1] and script.endswith(".py"):
            module = ".".join(parts[parts.index(top) :])[: -len(".py")]
            return shlex.join(["python", "-m", module, *args])
    return shlex.join([os.path.basename(script), *args])
