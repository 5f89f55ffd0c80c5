"""Presets: one TOML file names a whole pipeline (features, pooling, whitening, search) — data, not code."""
from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.registry import SEARCH_SECTIONS, SECTIONS, RegistryError
from .rules import incompatibility, learns

DEFAULT_PRESET = "sscd-spoc-lite0-sp"  # chosen by measurement: docs/default.md

TOP_LEVEL = {"name": "", "description": "", "reference": ""}


def _sections():
    """Section name -> stage registry (entries registered by `instar.catalog` when the package is imported)."""
    return SECTIONS


def parse_settings(items: list[str] | None, *, field: str = "--set", example: str = "pooling.p=4",
                   only: tuple[str, ...] | None = None) -> dict[str, str]:
    """'SECTION.KEY=VALUE' strings -> {'SECTION.KEY': 'VALUE'} (values parsed later, against the entry's schema);
    `only`: the sections allowed (e.g. the search-time ones). ValueError naming the item and what is wrong."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"{field} {item!r}: expected SECTION.KEY=VALUE, e.g. {example}")
        if only is not None and key.partition(".")[0] not in only:
            raise ValueError(f"{field} {item!r}: only search-time settings can change at search time "
                             f"({', '.join(s + '.*' for s in only)})")
        out[key] = value.strip()
    return out


class PresetError(ValueError):
    """A preset that cannot be used; the message names the preset file and the offending key."""


@dataclass
class Preset:
    name: str
    description: str
    reference: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    def to_toml(self) -> str:
        """The preset as TOML text (stored with every index so it can be re-read exactly)."""
        lines = [f"name = {_toml_value(self.name)}", f"description = {_toml_value(self.description)}",
                 f"reference = {_toml_value(self.reference)}"]
        for section, values in self.sections.items():
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"

    def extraction_toml(self) -> str:
        """The TOML of what an index stores (every section but the search-time ones: search, filter, rerank,
        expansion), so that an index can be searched with other search settings than it was built with."""
        kept = {k: v for k, v in self.sections.items() if k not in SEARCH_SECTIONS}
        return Preset(self.name, self.description, self.reference, kept).to_toml()

    def stored_differences(self, other: "Preset") -> list[str]:
        """'section.key: VALUE here, OTHER there' for every setting an index stores (every section but the
        search-time ones) that differs between this preset and `other`."""
        out = []
        for section, values in self.sections.items():
            if section in SEARCH_SECTIONS:
                continue
            theirs = other.sections.get(section, {})
            for key in dict.fromkeys([*values, *theirs]):
                if values.get(key) != theirs.get(key):
                    out.append(f"{dotted_key(section, key)}: {values.get(key)!r} in the index, {theirs.get(key)!r} asked")
        return out

    def with_overrides(self, overrides: dict[str, Any]) -> "Preset":
        """A copy with 'section.key' values replaced (validated like the file's own).

        Overriding a section's selector (e.g. ``pooling.method``) switches the entry: the section's other values
        are kept where the new entry takes them and dropped otherwise.
        """
        sections = _sections()
        raw = {"name": self.name, "description": self.description, "reference": self.reference,
               **copy.deepcopy(self.sections)}
        parsed = []
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in sections:
                raise PresetError(f"override {dotted!r}: unknown section {section!r} (sections: {', '.join(sections)})")
            parsed.append((sections[section], section, key, value))
        # selectors first, so that the other keys are checked against the entry they will reach
        for reg, section, key, value in sorted(parsed, key=lambda t: t[2] != t[0].selector):
            if key == reg.selector:
                entry = _entry(reg, str(value), f"override {dotted_key(section, key)}")
                raw[section] = {key: entry.name, **{k: v for k, v in raw[section].items() if k in entry.params}}
                continue
            entry = _entry(reg, raw[section][reg.selector] if reg.selector else reg.default, self.source)
            if key not in entry.params:
                raise PresetError(f"override {dotted_key(section, key)!r}: unknown key ({_known(reg, section, entry)})")
            raw[section][key] = _coerce(entry.params[key], value, f"override {dotted_key(section, key)}")
        return parse_preset(raw, source=f"{self.source} with overrides")

    @property
    def needs_training(self) -> bool:
        """Whether a chosen stage (codebook, whitening, ...) is learned from training images."""
        return learns(self.sections)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def dotted_key(section: str, key: str) -> str:
    return f"{section}.{key}"


def _entry(reg, name: str, where: str):
    try:
        return reg.entry(name)
    except RegistryError as e:
        raise PresetError(f"{where}: {e}") from None


def _known(reg, section: str, entry) -> str:
    keys = ", ".join(dotted_key(section, k) for k in entry.params) or "none"
    return f"{reg.selector} {entry.name!r} takes: {keys}" if reg.selector else f"known: {keys}"


def _coerce(default: Any, value: Any, where: str) -> Any:
    """Parse a CLI string or check a TOML value against the type of the schema default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, (list, tuple)):
            if isinstance(value, str):
                value = [float(x) for x in value.split(",") if x.strip()]
            if not isinstance(value, list) or not value:
                raise ValueError
            return [float(x) for x in value]
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise PresetError(f"{where}: {value!r} is not a valid {type(default).__name__}") from None


def _check_range(allowed, value: Any, where: str) -> None:
    """PresetError naming `where` (the file and section.key) and the range, for a number (or any item of a list
    of numbers) outside the range its entry declares."""
    if allowed is None:
        return
    for v in value if isinstance(value, list) else [value]:
        if not allowed.contains(v):
            shown = f"{value!r}" if not isinstance(value, list) else f"{value!r} (item {v!r})"
            raise PresetError(f"{where} = {shown} is out of range: expected {allowed}"
                              + (", a finite number" if isinstance(v, float) else ""))


def parse_preset(raw: dict[str, Any], source: str = "<preset>") -> Preset:
    """Validate a preset dict (as read from TOML) against the stage registries and fill in defaults."""
    registries = _sections()
    for key in raw:
        if key not in registries and key not in TOP_LEVEL:
            raise PresetError(f"{source}: unknown section or key {key!r} (sections: {', '.join(registries)})")
    if not raw.get("name"):
        raise PresetError(f"{source}: a preset needs a name")
    sections: dict[str, dict[str, Any]] = {}
    for section, reg in registries.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise PresetError(f"{source}: [{section}] must be a table")
        name = given.get(reg.selector, reg.default) if reg.selector else reg.default
        if not isinstance(name, str):
            raise PresetError(f"{source}: {section}.{reg.selector} must be a string, got {name!r}")
        entry = _entry(reg, name, source)
        for key in given:
            if key != reg.selector and key not in entry.params:
                raise PresetError(f"{source}: unknown key {section}.{key} ({_known(reg, section, entry)})")
        values = {reg.selector: name} if reg.selector else {}
        for key, default in entry.params.items():
            value = _coerce(default, given[key], f"{source}: {section}.{key}") if key in given else copy.deepcopy(default)
            values[key] = list(value) if isinstance(value, tuple) else value
            _check_range(entry.ranges.get(key), values[key], f"{source}: {section}.{key}")
        for key, allowed in getattr(entry, "choices", {}).items():
            allowed = tuple(allowed()) if callable(allowed) else tuple(allowed)
            if values[key] not in allowed:
                raise PresetError(f"{source}: {section}.{key} = {values[key]!r} is not one of {', '.join(allowed)}")
        sections[section] = values
    why = incompatibility(sections)
    if why:
        raise PresetError(f"{source}: {why}")
    return Preset(name=str(raw["name"]), description=str(raw.get("description", "")),
                  reference=str(raw.get("reference", "")), sections=sections, source=source)


def builtin_names() -> list[str]:
    """Names of the presets shipped in instar/presets/."""
    return sorted(p.name[:-5] for p in resources.files("instar.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A built-in preset by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise PresetError(f"{path}: no such preset file")
        text, source = path.read_text(), str(path)
    else:
        name = str(name_or_path)
        if name not in builtin_names():
            raise PresetError(f"unknown preset {name!r}; built-in presets: {', '.join(builtin_names())} (or give a .toml path)")
        text = resources.files("instar.presets").joinpath(f"{name}.toml").read_text()
        source = f"preset {name}"
    return preset_from_toml(text, source)


def preset_from_toml(text: str, source: str = "<preset>") -> Preset:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{source}: not valid TOML ({e})") from None
    return parse_preset(raw, source)
