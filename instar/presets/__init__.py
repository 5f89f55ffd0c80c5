"""Presets: one TOML file names a whole pipeline (features, pooling, whitening, search) — data, not code."""
from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_PRESET = "rootsift-vlad"

# Every key a preset may set, with its default; a key outside this schema is an error.
SCHEMA: dict[str, dict[str, Any]] = {
    "image": {"max_size": 1024},
    "features": {"type": "cnn", "arch": "vgg16", "weights": "imagenet", "scales": [1.0], "max_keypoints": 2000},
    "pooling": {"method": "gem", "p": 3.0, "center_prior": True, "levels": 3, "overlap": 0.4,
                "k": 64, "power": 0.5, "intra": True, "niter": 20, "seed": 0},
    "whitening": {"method": "none", "dim": 0, "max_train_images": 2000, "max_train_vectors": 200000},
    "search": {"k": 100, "rerank": "none", "expansion": "none", "qe_top": 10, "alpha": 3.0},
}
TOP_LEVEL = {"name": "", "description": "", "reference": ""}
CHOICES = {
    ("features", "type"): ("cnn", "rootsift"),
    ("features", "arch"): ("vgg16", "resnet50", "resnet101"),
    ("pooling", "method"): ("mac", "spoc", "sum", "gem", "crow", "rmac", "vlad"),
    ("whitening", "method"): ("none", "pca"),
    ("search", "rerank"): ("none",),
    ("search", "expansion"): ("none", "aqe", "alpha-qe"),
}


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

    def with_overrides(self, overrides: dict[str, Any]) -> "Preset":
        """A copy with 'section.key' values replaced (validated like the file's own)."""
        raw = {"name": self.name, "description": self.description, "reference": self.reference,
               **copy.deepcopy(self.sections)}
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in SCHEMA or key not in SCHEMA[section]:
                raise PresetError(f"override {dotted!r}: unknown key (known: {', '.join(_all_keys())})")
            raw[section][key] = _coerce(SCHEMA[section][key], value, f"override {dotted}")
        return parse_preset(raw, source=f"{self.source} with overrides")

    @property
    def needs_training(self) -> bool:
        return self["pooling"]["method"] == "vlad" or self["whitening"]["method"] != "none"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys]


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
        if isinstance(default, list):
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


def parse_preset(raw: dict[str, Any], source: str = "<preset>") -> Preset:
    """Validate a preset dict (as read from TOML) and fill in defaults."""
    for key in raw:
        if key not in SCHEMA and key not in TOP_LEVEL:
            raise PresetError(f"{source}: unknown section or key {key!r} (sections: {', '.join(SCHEMA)})")
    if not raw.get("name"):
        raise PresetError(f"{source}: a preset needs a name")
    sections: dict[str, dict[str, Any]] = {}
    for section, defaults in SCHEMA.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise PresetError(f"{source}: [{section}] must be a table")
        for key in given:
            if key not in defaults:
                raise PresetError(f"{source}: unknown key {section}.{key} (known: {', '.join(defaults)})")
        sections[section] = {k: _coerce(d, given[k], f"{source}: {section}.{k}") if k in given else copy.deepcopy(d)
                             for k, d in defaults.items()}
    for (section, key), allowed in CHOICES.items():
        if sections[section][key] not in allowed:
            raise PresetError(f"{source}: {section}.{key} = {sections[section][key]!r} is not one of {', '.join(allowed)}")
    ftype, method = sections["features"]["type"], sections["pooling"]["method"]
    if (ftype == "rootsift") != (method == "vlad"):
        raise PresetError(f"{source}: pooling.method {method!r} does not fit features.type {ftype!r} "
                          "(VLAD aggregates local features; the other poolings act on CNN maps)")
    if any(s <= 0 for s in sections["features"]["scales"]):
        raise PresetError(f"{source}: features.scales must all be positive")
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
