"""Stage registries: each pipeline stage (trunk, regions, pooling, whitening, ...) keeps a name -> constructor table.

A preset section picks one entry by its selector key (``method`` for most sections) and passes the section's
other keys to the entry as keyword arguments. An entry's keyword-only parameters and their defaults *are* the
section's schema: a new trunk, pooling or coding is a new registered entry in its own module, and the preset
validator, ``--set`` overrides and ``instar presets`` learn its parameters from its signature.

    POOLINGS = Registry("pooling")

    @POOLINGS.register("gem")
    class GeM(MapPooling):
        def __init__(self, *, p: float = 3.0): ...

Parameter types come from the defaults: bool, int, float, str, or a tuple of floats (a list in TOML).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


class RegistryError(ValueError):
    """An unknown entry or a bad parameter; the message names the stage, the entry and the key."""


@dataclass(frozen=True)
class Entry:
    """One registered constructor: its name, the callable, its keyword parameters with defaults, and its doc line."""
    name: str
    factory: Callable[..., Any]
    params: dict[str, Any]
    doc: str
    attrs: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        # class attributes of the entry (e.g. `kind`, `input_kind`) without building it
        try:
            return self.attrs[key]
        except KeyError:
            factory = object.__getattribute__(self, "factory")
            if hasattr(factory, key):
                return getattr(factory, key)
            raise AttributeError(f"entry {self.name!r} has no attribute {key!r}") from None


def keyword_params(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of `factory` (a class's __init__ or a function) with their defaults."""
    sig = inspect.signature(factory)
    out: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{factory.__qualname__}: keyword parameter {p.name!r} needs a default")
        out[p.name] = p.default
    return out


class Registry:
    """Named constructors for one stage. `selector` is the preset key that names the entry (None: one fixed entry)."""

    def __init__(self, stage: str, selector: str | None = "method", default: str | None = None):
        self.stage = stage
        self.selector = selector
        self.default = default
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **attrs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a class or function under `name`; `attrs` are extra facts read without building it."""
        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.stage}: {name!r} is registered twice")
            doc = (inspect.getdoc(factory) or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, keyword_params(factory), doc[0] if doc else "", attrs)
            if self.default is None:
                self.default = name
            return factory
        return deco

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            key = f"{self.stage}.{self.selector}" if self.selector else self.stage
            raise RegistryError(f"{key} = {name!r} is not one of {', '.join(self._entries)}") from None

    def build(self, name: str, **params: Any) -> Any:
        """Construct entry `name` with `params` (each must be one of its keyword parameters)."""
        entry = self.entry(name)
        unknown = set(params) - set(entry.params)
        if unknown:
            raise RegistryError(f"{self.stage} {name!r} takes no parameter {sorted(unknown)[0]!r} "
                                f"(it takes: {', '.join(entry.params) or 'none'})")
        return entry.factory(**params)

    def build_section(self, section: dict[str, Any], **runtime: Any) -> Any:
        """Construct the entry a validated preset section names, passing the section's other keys."""
        name = section[self.selector] if self.selector else self.default
        params = {k: v for k, v in section.items() if k != self.selector}
        obj = self.build(name, **params)
        for k, v in runtime.items():
            setattr(obj, k, v)
        return obj


# The pipeline's stages, in preset order. Entries register themselves in their own modules; `instar.stages`
# imports every built-in one.
IMAGE = Registry("image", selector=None)
FEATURES = Registry("features", selector="type", default="cnn")
TRUNKS = Registry("trunk", selector="arch", default="vgg16")
REGIONS = Registry("regions", default="none")
POOLINGS = Registry("pooling", default="gem")
REGION_POOLINGS = Registry("region_pooling", default="none")
CODINGS = Registry("coding", default="none")
WHITENINGS = Registry("whitening", default="none")
TRAIN = Registry("train", selector=None)
SEARCH = Registry("search", selector=None)
FILTERS = Registry("filter", default="knn")
RERANKERS = Registry("rerank", default="none")
EXPANSIONS = Registry("expansion", default="none")
