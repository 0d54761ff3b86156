"""YAML to dataclass: the strict coercion behind `pipeline.config.load_config`.

`build` turns a parsed mapping into any config dataclass, checking every key and type on the way; an unknown key or a
value of the wrong type is a `ConfigError` naming the dotted key and the file, because a silently ignored typo in a
sweep wastes GPU-hours. Nothing here knows the experiment's sections (they live in `pipeline.config_types`), so the
projection model and the inference command can build their own sections with the same messages.

Hand-written rather than pydantic or cattrs: neither is in the lock (constraints.txt), and both word their errors
their own way ("Extra inputs are not permitted", "Input should be a valid integer"), where the tests and the users'
scripts match these messages.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


def apply_override(raw: dict, item: str, source: Path) -> None:
    """Set the dotted key of one `KEY=VALUE` override (VALUE parsed as YAML) in the parsed mapping `raw`."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=64")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: --set {key}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(text)


def build(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """Turn a parsed mapping into dataclass `cls`, checking every key and type on the way."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (known keys in {where}: {', '.join(sorted(known))})"
        )
    values = {name: _coerce(hints[name], value, source, f"{prefix}{name}") for name, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, prefix=f"{key}.")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"{source}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_coerce(item_hint, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value
