"""A client's error reason as one readable line (what events, tables and the dashboard show).

Flower sends a ClientApp's exception as ``<class 'T'>:<'str(ex)'>``; in simulation ``str(ex)``
is Ray's whole chained, ANSI-coloured traceback of the exception wrapped in
``ClientAppException``. :func:`readable_reason` keeps the error's own ``Type: message``.
"""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FLOWER_WRAPPED = re.compile(r"<class '([\w.()]+)'>:<'(.*)'>", re.S)  # str(type(ex)):<'str(ex)'>
EXCEPTION_LINE = re.compile(r"([A-Za-z_][\w.]*(?:\([\w.]*\))?)(?::\s*(.*))?")
WRAPPERS = ("ClientAppException", "RayTaskError")  # Flower's and Ray's envelopes of the error
CLIENT_APP_MESSAGE = re.compile(r"Exception ClientAppException occurred\. Message:\s*")
PATH = re.compile(r"(?:/[^/\s'\"():,]+)+/([^/\s'\"():,]+)")
MAX_REASON = 500


def _exception_lines(text: str) -> list[tuple[str, str]]:
    """(type, message) of each exception line of a traceback text: unindented ``Type: message``
    lines that follow an indented frame (``  File ...``), the message's continuation lines
    (up to the next blank line) joined."""
    found: list[tuple[str, str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        after_frame = i > 0 and lines[i - 1].startswith(" ")
        match = EXCEPTION_LINE.fullmatch(line.rstrip())
        if after_frame and match and not line.startswith(" "):
            rest = []
            for more in lines[i + 1:]:
                if not more.strip() or more.startswith(" "):
                    break
                rest.append(more.strip())
            found.append((match.group(1), " ".join([match.group(2) or "", *rest]).strip()))
    return found


def readable_reason(reason: str) -> str:
    """One line from a client's error reason: ``Type: message`` of the error itself.

    Flower sends ``<class 'T'>:<'str(ex)'>``; in simulation ``str(ex)`` is Ray's whole chained
    traceback (ANSI-coloured) of the ClientApp's exception wrapped in ``ClientAppException``.
    The last exception line that is not such a wrapper is kept (its type without module path);
    file paths are cut to their file name, whitespace collapsed, the length capped at
    :data:`MAX_REASON` characters. A reason that is already one plain sentence is unchanged."""
    text = ANSI.sub("", reason).strip()
    kind = ""
    if wrapped := FLOWER_WRAPPED.fullmatch(text):
        kind, text = wrapped.group(1), wrapped.group(2).strip()
    errors = [(t, m) for t, m in _exception_lines(text)
              if not any(w in t for w in WRAPPERS)]
    if errors:
        kind, text = errors[-1]
    elif any(w in kind for w in WRAPPERS) and (found := _exception_lines(text)):
        kind, text = "", found[-1][1]
    text = CLIENT_APP_MESSAGE.sub("", text)
    kind = kind.rsplit(".", 1)[-1]
    line = " ".join(PATH.sub(r"\1", f"{kind}: {text}" if kind else text).split())
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 1] + "…"
