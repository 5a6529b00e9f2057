"""Loading a config: profiles, ``section.key=value`` overrides, and the type checks of every value."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from core.config.tree import Config, config_class
from core.errors import UserError

PROFILES = ("tiny", "demo", "paper")
CONFIG_DIR = Path(__file__).parents[1] / "configs"


def _coerce(value, tp, where: str):
    """Check ``value`` against the annotated type ``tp`` (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config: {where} must be a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"config: {where} must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"config: {where}={value!r} does not fit {tp}")
    if tp is type(None):
        if value is not None:
            raise UserError(f"config: {where} must be null")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return tp(value)
        except ValueError:
            raise UserError(f"config: {where} must be {tp.__name__}, got {value!r}") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise UserError(f"config: {where} must be {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    unknown = sorted(set(values) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(f"config: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            # a nested section starts from its field's own default (DpoConfig.lora has alpha 16, not
            # LoraConfig's 32), so overriding one key keeps the others
            section = _build(hints[name], value, key)
            given = {k: getattr(section, k) for k in value}
            kwargs[name] = dataclasses.replace(_field_default(cls, name), **given)
        else:
            kwargs[name] = _coerce(value, hints[name], key)
            if "check" in fields[name].metadata:  # a value only a library can tell apart (a scheduler name)
                fields[name].metadata["check"](kwargs[name], key)
    return cls(**kwargs)  # sections and keys not mentioned keep their defaults


def _field_default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """``["cpt.learning_rate=1e-4", "data.strict=true"]`` -> nested dict with YAML-typed values."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value (e.g. cpt.learning_rate=1e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load_config(profile: str = "demo", overrides: list[str] | None = None) -> Config:
    """Resolve a profile plus ``key=value`` overrides into a :class:`Config`."""
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    path = CONFIG_DIR / f"{profile}.yaml"
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    values = _merge(values, parse_overrides(overrides or []))
    values["profile"] = profile
    return _build(config_class(), values)


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (e.g. from a run's manifest)."""
    return _build(config_class(), values)
