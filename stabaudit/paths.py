"""Path text: control characters refused (exit 2), and text shown escaped in one-line errors."""

from __future__ import annotations

import os
import unicodedata

from stabaudit.errors import StabauditError, UsageError

# Categories that break a line or hide text on a terminal: C0/C1 controls (NUL, newline, escape,
# DEL...), and the Unicode line and paragraph separators.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in _CONTROL_CATEGORIES


def has_control(text: str) -> bool:
    """Whether ``text`` holds a NUL or another control character."""
    return any(_is_control(c) for c in text)


def shown(text: str) -> str:
    """``text`` as it is when it holds no control character, else quoted with escapes (repr)."""
    return repr(text) if has_control(text) else text


def one_line(text: str) -> str:
    """``text`` with every control character escaped (a newline becomes backslash-n): one line."""
    if not has_control(text):
        return text
    return "".join(repr(c)[1:-1] if _is_control(c) else c for c in text)


def control_problem(text: str) -> str | None:
    """Why ``text`` is refused as a path (its first control character), or None."""
    bad = next((c for c in text if _is_control(c)), None)
    if bad is None:
        return None
    name = "NUL" if bad == "\x00" else unicodedata.name(bad, f"U+{ord(bad):04X}")
    return f"the path holds a control character ({name} {bad!r}); refused"


def check_path_text(
    path: str | os.PathLike[str], what: str = "", *, error: type[StabauditError] = UsageError
) -> None:
    """Refuse a path holding a NUL or another control character (``error``, exit 2): no file
    system accepts NUL, and the others only ever come from a mistake or an attack on the output.
    ``what`` names where the path came from ("--output"); without it the error carries the path
    (the CLI shows it escaped, before the reason)."""
    text = os.fspath(path)
    reason = control_problem(text)
    if reason is None:
        return
    if what:
        raise error(f"{what} {shown(text)}: {reason}")
    raise error(reason, path=text)
