"""Typed parsing of plain data (YAML, --set, keyword arguments) into dataclasses.

`from_mapping(cls, data, where)` builds dataclass `cls` strictly: unknown
keys name the dotted key, close matches and the valid keys; wrong types say
what was expected. A dataclass with a `check()` method is checked once it is
built. The config sections and every method's parameters go through here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from .errors import SaliencyError, did_you_mean


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from `data`, strictly: unknown keys and wrong
    types raise SaliencyError naming the dotted key."""
    label = where or "top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SaliencyError(f"{label}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            msg = did_you_mean(str(key), names, what="key")
            raise SaliencyError(f"{msg.replace(repr(str(key)), repr(dotted), 1)}")
        kwargs[key] = coerce(hints[key], value, dotted)
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against type hint `tp`, converting only where it is
    unambiguous (an int where a float is expected, a numeric string for a float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(option, value, where)
            except SaliencyError:
                continue
        raise _type_error(tp, value, where)
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise SaliencyError(f"{where}: expected one of {choices}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin is list:
        (item_tp,) = args or (Any,)
        if not isinstance(value, (list, tuple)):
            raise _type_error(tp, value, where)
        return [coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(tp, value, where)
        _, val_tp = args or (Any, Any)
        return {str(k): coerce(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if tp in _SCALARS:
        return _scalar(tp, value, where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # a bug in this module


_SCALARS = (bool, int, float, str)


def _scalar(tp: type, value: Any, where: str) -> Any:
    """bool, int and str as they are (True is not an int); a float from an
    int or a numeric string (YAML 1.1 reads 1e-3 as a string)."""
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _type_error(tp, value, where) from None
    if isinstance(value, bool) != (tp is bool):
        raise _type_error(tp, value, where)
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, tp):
        return value
    raise _type_error(tp, value, where)


def _type_error(tp: Any, value: Any, where: str) -> SaliencyError:
    return SaliencyError(f"{where}: expected {_describe(tp)}, got {value!r}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))
