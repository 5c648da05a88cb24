"""Config helpers in the big_vision style.

Every `configs/*.py` defines `get_config(arg=None)` and returns a locked
`ml_collections.ConfigDict`. `arg` is a comma-separated `key=value` string
(`"runlocal,model_dir=/ckpt,steps=10"`; a bare key means `True`) parsed by `parse_arg`.
"""

from __future__ import annotations

import ast
import difflib
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config or a config override names a field that does not exist or has a bad value."""


def _closest(name: str, valid) -> str:
  matches = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
  return f" Closest valid names: {', '.join(matches)}." if matches else ""


def _coerce(text: str, default: Any) -> Any:
  """Turns `text` into the type of `default` (bool, int, float, str, tuple)."""
  if isinstance(default, bool):
    lowered = text.lower()
    if lowered in ("1", "true", "yes", ""):
      return True
    if lowered in ("0", "false", "no"):
      return False
    raise ConfigError(f"expected a boolean, got {text!r}")
  if isinstance(default, int):
    return int(text)
  if isinstance(default, float):
    return float(text)
  if isinstance(default, (tuple, list)):
    return tuple(ast.literal_eval(text))
  if default is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `get_config`'s `arg` string against typed defaults.

  Args:
    arg: `"key=value,flag,..."` or None. A bare `flag` sets it to True.
    **defaults: the accepted keys and their default values (which fix their types).

  Returns:
    A locked ConfigDict with every default, overridden by `arg`.

  Raises:
    ConfigError: for a key that is not among `defaults` (with the closest valid names)
      or a value of the wrong type.
  """
  values = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, _, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(
          f"Unknown config argument {key!r}; valid ones: {sorted(defaults)}."
          + _closest(key, defaults))
    try:
      values[key] = _coerce(text.strip() if "=" in item else "", defaults[key])
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f"Bad value for config argument {key!r}: {e}") from e
  out = ml_collections.ConfigDict(values)
  out.lock()
  return out


def _flatten(cfg, prefix=""):
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flatten(value, name + ".")
    else:
      yield name, value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
  """Sets dotted `overrides` (`{"rl.alpha": 0.0}`) on a locked config, with clear errors."""
  valid = dict(_flatten(config))
  for dotted, value in overrides.items():
    if dotted not in valid:
      raise ConfigError(f"Unknown config field {dotted!r}." + _closest(dotted, valid))
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.ignore_type() if valid[dotted] is None else _nullcontext():
      node[leaf] = value
  return config


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def to_dict(config) -> dict:
  """A plain, JSON-friendly dict of a ConfigDict (tuples become lists)."""
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)
