"""Decoding a parsed YAML document into the config Structs, reporting every bad field.

msgspec stops at the first value that has the wrong type or breaks a bound. To report all of
them in one pass, the bad value is taken out of (a copy of) the document and decoding runs
again, so the field's default stands in; a bad required field ends the search, as its
absence would only be reported as missing.
"""

from __future__ import annotations

import copy
import re
import typing
from typing import Any

import msgspec

from .bounds import LARGEST, LONGEST_S

_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_ANY_KEY = "..."            # msgspec's name for "some key of this dict"
_MOST_PROBLEMS = 100


def convert(doc: Any, type_: type) -> tuple[Any, list[str]]:
    """``(decoded, problems)``, each problem ``path: what is wrong``. With problems, the
    decoded value has defaults where the bad values were (None when that was impossible),
    so checks across fields can still report theirs (``stood_in`` says which to doubt).

    A bad value inside a YAML anchor is reported once, at the first place msgspec meets it:
    the copy keeps the anchor's uses shared, so taking it out there takes it out of all."""
    problems: list[str] = []
    copied = False
    while len(problems) < _MOST_PROBLEMS:
        try:
            decoded = msgspec.convert(doc, type_)
        except msgspec.ValidationError as exc:
            match = _AT_PATH.match(str(exc))
            assert match is not None   # the pattern matches any text
            message, path = match.group("msg"), match.group("path") or ""
            if not copied:
                # The caller's document stays as it was; YAML anchors may share its parts.
                doc, copied = copy.deepcopy(doc), True
            wording = _wording(type_, path, message)
            path, removed = _take_out(doc, type_, path)
            problems.append("%s: %s" % (path.lstrip(".") or "(top level)", wording))
            if not removed:
                break
        else:
            return decoded, problems
    return None, problems


def _segments(path: str) -> list[str | int]:
    return [name or (int(index) if index.isdigit() else index)
            for name, index in _SEGMENT.findall(path)]


def _strip(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    """The type under Annotated and Optional, and the constraints found on the way."""
    metas: list[msgspec.Meta] = []
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            metas.extend(m for m in tp.__metadata__ if isinstance(m, msgspec.Meta))
            tp = tp.__origin__
        elif origin is typing.Union or type(tp).__name__ == "UnionType":
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(options) != 1:
                return tp, metas
            tp = options[0]
        else:
            return tp, metas


def _field_type(tp: Any, segment: str | int) -> tuple[Any, bool]:
    """The declared type one step down from ``tp``, and whether it may be left out."""
    tp, _ = _strip(tp)
    if isinstance(segment, int):
        return typing.get_args(tp)[0], False
    if segment == _ANY_KEY:
        return typing.get_args(tp)[1], True
    for field in msgspec.structs.fields(tp):
        if field.encode_name == segment:
            return field.type, not field.required
    raise LookupError(segment)


def _take_out(doc: Any, type_: type, path: str) -> tuple[str, bool]:
    """Remove the value at ``path`` when its field has a default. Returns the path with the
    dict keys filled in that msgspec leaves out (``[...]``), and whether the value went."""
    segments = _segments(path)
    if not segments:
        return path, False
    tp, node, concrete = type_, doc, ""
    try:
        for i, segment in enumerate(segments):
            child, optional = _field_type(tp, segment)
            if segment == _ANY_KEY:
                segment = _failing_key(node, child)
            concrete += "[%d]" % segment if isinstance(segment, int) else ".%s" % segment
            if i < len(segments) - 1:
                tp, node = child, node[segment]
    except (LookupError, TypeError, IndexError):
        return path, False
    if not optional or not isinstance(node, dict) or segment not in node:
        return concrete, False
    del node[segment]
    return concrete, True


def _failing_key(mapping: Any, value_type: Any) -> Any:
    """The first key whose value does not decode: the one msgspec stopped at."""
    for key, value in mapping.items():
        try:
            msgspec.convert(value, value_type)
        except msgspec.ValidationError:
            return key
    raise LookupError(_ANY_KEY)


def _wording(type_: type, path: str, message: str) -> str:
    """A broken bound in the field's own words (``must be a positive number of seconds``);
    any other problem as msgspec puts it."""
    if ", got " in message or not message.startswith("Expected"):
        return message
    tp: Any = type_
    try:
        for segment in _segments(path):
            tp, _ = _field_type(tp, segment)
    except (LookupError, TypeError, IndexError):
        return message
    _, metas = _strip(tp)
    for meta in metas:
        if meta.le in (LONGEST_S, LARGEST) and "` <" in message:
            # Past the sanity limit: the field's words only tell the lower bound.
            return "must be at most %g" % meta.le
        if meta.description:
            return "must be %s" % meta.description
    return message



_LAST_STEP = re.compile(r"^(?P<parent>.*?)(?:\.(?P<name>[^.\[]+)|\[\d+\])$")


def stood_in(problem: str, decode_problems: list[str]) -> bool:
    """Whether a problem found across fields is about a default standing in for a value
    that was taken out: in the same section, and naming the field (``max_backoff_s: must
    be >= backoff_s`` after a bad ``backoff_s``). Such a problem is not about the file."""
    for bad in decode_problems:
        match = _LAST_STEP.match(bad.partition(": ")[0])
        if match is None or not match.group("name"):
            continue
        if problem.startswith(match.group("parent")) and re.search(
                r"\b%s\b" % re.escape(match.group("name")), problem):
            return True
    return False
