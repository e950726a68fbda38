"""Check a composed config (plain dicts) against dataclass schemas.

Returns typed dataclass instances or raises :class:`UsageError` naming the
key, what was given, what was expected, and the closest valid key. Hydra
parses ``key=value`` overrides into ints, floats, bools, lists and strings;
this module checks those values, converting only where nothing is lost
(``int`` to ``float``, a list to a tuple).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal, Union

from jevons.framework.errors import UsageError, did_you_mean


def to_dataclass(cls: type, value: Any, path: str) -> Any:
    """Build ``cls`` from a mapping, recursively checking every field."""
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise UsageError(f"{path or 'config'} must be a mapping of keys to values, got {_show(value)}.")
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in value:
        if key not in hints:
            where = f"'{path}'" if path else "the config"
            raise UsageError(
                f"Unknown key '{_join(path, key)}'.{did_you_mean(str(key), names, f'{path}.' if path else '')} "
                f"Valid keys in {where}: {', '.join(names)}."
            )
    kwargs = {key: check_value(hints[key], item, _join(path, key)) for key, item in value.items()}
    return cls(**kwargs)


def check_value(tp: Any, value: Any, path: str) -> Any:
    """Check (and losslessly convert) one value against a type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return to_dataclass(tp, value, path)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_value(option, value, path)
            except UsageError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise _type_error(path, value, " or ".join(_describe(o) for o in options))
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise UsageError(
            f"{path}={value!r} is not one of {', '.join(repr(c) for c in choices)}."
            f"{did_you_mean(str(value), [str(c) for c in choices])}"
        )
    if tp in (list, tuple, dict):  # unparameterised: any items
        tp = {list: list[Any], tuple: tuple[Any, ...], dict: dict[Any, Any]}[tp]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(path, value, _describe(tp))
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item_type = args[0] if args else Any
        items = [check_value(item_type, item, f"{path}[{i}]") for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(path, value, "a mapping")
        key_type, item_type = typing.get_args(tp) or (Any, Any)
        return {
            check_value(key_type, k, path): check_value(item_type, v, _join(path, str(k))) for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(path, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(path, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(path, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(path, value, "a string")
    raise TypeError(f"unsupported type {tp!r} in a config schema at {path}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp in (list, tuple, dict):  # unparameterised: any items
        tp = {list: list[Any], tuple: tuple[Any, ...], dict: dict[Any, Any]}[tp]
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _type_error(path: str, value: Any, expected: str) -> UsageError:
    return UsageError(f"{path}={value!r} has the wrong type: expected {expected}, got {type(value).__name__}.")
