"""Config text -> a mapping of fields, or one :class:`~common.config.ConfigError` line that names
the source and its ``line:column``.

YAML is read with plain tags only (``!!python/object`` and friends are refused, like
``yaml.safe_load``) and a key given twice in one mapping is an error (PyYAML would silently keep
the last value); JSON likewise refuses duplicate keys, named at their value's line and column.
Text must be UTF-8 (a BOM is allowed).
Nothing here checks fields: that is :mod:`common.validate`'s job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml

from common.config import ConfigError, Problem

Format = Literal["yaml", "json"]
MAX_DEPTH = 32  # an experiment nests 3 levels; deeper input is refused as a whole


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records every key repeated within one mapping."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}  # key -> line it was first given at
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may be overridden by explicit keys, as YAML intends
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            try:
                if key in first:
                    self.duplicates.append((mark.line + 1, mark.column + 1, f"duplicate key "
                                            f"{key!r} (first given at line {first[key]})"))
                else:
                    first[key] = mark.line + 1
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
        return super().construct_mapping(node, deep)


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of character ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _yaml(text: str, source: str) -> object:
    try:
        loader = _Loader(text)  # the reader checks for unprintable characters at once
    except yaml.reader.ReaderError as error:
        raise _syntax(source, *_position(text, error.position),
                      f"character U+{error.character:04X} is not allowed in YAML") from None
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = error.problem or error.context or "not valid YAML"
        if error.context and error.problem and error.context_mark is not None:
            what += f" ({error.context} started at line {error.context_mark.line + 1})"
        raise _syntax(source, mark.line + 1, mark.column + 1, what) from None
    except yaml.YAMLError as error:
        raise ConfigError([Problem("", f"{source}: {error}")], source) from None
    except RecursionError:
        raise _too_deep(source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError([Problem("", f"{source}:{line}:{column}: {what}")
                           for line, column, what in sorted(loader.duplicates)], source)
    return data


class _Decoder(json.JSONDecoder):
    """``json.JSONDecoder`` that records every key repeated within one object, as ``(index of
    its value, message)``. Python's scanner (not the C one) so that objects can be observed."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates: list[tuple[int, str]] = []
        self.text = ""
        self.parse_object = self._object
        self.scan_once = json.scanner.py_make_scanner(self)

    def decode(self, s: str, *args: Any, **kwargs: Any) -> object:
        self.text = s
        return super().decode(s, *args, **kwargs)

    def _object(self, s_and_end: tuple[str, int], strict: bool, scan_once: Any, _hook: Any,
                _pairs_hook: Any, memo: dict | None = None) -> tuple[dict, int]:
        starts: list[int] = []  # where each value of this object starts

        def scan(s: str, index: int) -> tuple[Any, int]:
            starts.append(index)
            return scan_once(s, index)

        pairs, end = json.decoder.JSONObject(s_and_end, strict, scan, None, list, memo)
        first: dict[str, int] = {}
        for (key, _), at in zip(pairs, starts, strict=True):
            if key in first:
                line = _position(self.text, first[key])[0]
                self.duplicates.append((at, f"duplicate key {key!r} (first given at line {line})"))
            first.setdefault(key, at)
        return dict(pairs), end


def _json(text: str, source: str) -> object:
    repeated = False

    def mapping(pairs: list[tuple[str, Any]]) -> dict:
        nonlocal repeated
        repeated = repeated or len({key for key, _ in pairs}) < len(pairs)
        return dict(pairs)

    try:
        data = json.loads(text, object_pairs_hook=mapping)  # the C scanner: fast
    except json.JSONDecodeError as error:
        raise _syntax(source, error.lineno, error.colno, error.msg) from None
    except RecursionError:
        raise _too_deep(source) from None
    if repeated:  # rare: parse again, slowly, to say where
        decoder = _Decoder()
        decoder.decode(text)
        raise ConfigError([_syntax(source, *_position(text, at), what).problems[0]
                           for at, what in sorted(decoder.duplicates)], source)
    return data


def _too_deep(source: str) -> ConfigError:
    return ConfigError([Problem("", f"{source}: nested too deeply")], source)


def _syntax(source: str, line: int, column: int, what: str) -> ConfigError:
    return ConfigError([Problem("", f"{source}:{line}:{column}: {what}")], source)


def parse(raw: bytes, source: str, fmt: Format) -> object:
    """Decode ``raw`` (UTF-8) and parse it as ``fmt``; ``source`` names it in the messages.

    Raises :class:`ConfigError` with one problem: ``<source>:<line>:<column>: <what>`` (for
    duplicate keys, one problem per repeated key).
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise _syntax(source, line, column,
                      f"not UTF-8 text (byte 0x{raw[error.start]:02x})") from None
    data = _json(text, source) if fmt == "json" else _yaml(text, source)
    if _depth(data) > MAX_DEPTH:  # later steps (validation, copies, echoes) recurse
        raise _too_deep(source)
    return data


def _depth(data: object) -> int:
    """How deeply lists and mappings nest in ``data`` (a scalar: 0), without recursion."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in children)
    return deepest


def read(path: str | Path) -> object:
    """The parsed content of a ``.json`` (JSON) or any other (YAML) file.

    Raises :class:`ConfigError` naming the file: unreadable, not UTF-8, or not valid syntax.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError([Problem("", f"{path}: {error.strerror or error}")], str(path)) from None
    return parse(raw, str(path), "json" if str(path).endswith(".json") else "yaml")
