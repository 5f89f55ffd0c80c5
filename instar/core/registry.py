"""Stage registries: each pipeline stage (trunk, regions, pooling, whitening, ...) keeps a name -> constructor table.

A preset section picks one entry by its selector key (``method`` for most sections) and passes the section's
other keys to the entry as keyword arguments. An entry's keyword-only parameters and their defaults *are* the
section's schema: a new trunk, pooling or coding is a new registered entry in its own module, and the preset
validator, ``--set`` overrides and ``instar presets`` learn its parameters from its signature.

    POOLINGS = Registry("pooling")

    @POOLINGS.register("gem")
    class GeM(MapPooling):
        def __init__(self, *, p: float = 3.0): ...

Parameter types come from the defaults: bool, int, float, str, or a tuple of floats (a list in TOML). Every
numeric parameter declares its range next to its default with ``typing.Annotated`` (for a tuple, each item's):

        def __init__(self, *, p: Annotated[float, Range(gt=0)] = 3.0, top: Annotated[int, Range(ge=1)] = 100): ...

and the preset parser refuses a value outside it (TOML, ``--set`` and the service's ``set`` alike), naming
``section.key`` and the range; a float must also be finite.
"""
from __future__ import annotations

import inspect
import math
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from . import protocols as P


class RegistryError(ValueError):
    """An unknown entry or a bad parameter; the message names the stage, the entry and the key."""


@dataclass(frozen=True)
class Range:
    """The values a numeric parameter may take: at least `ge`, above `gt`, at most `le`, below `lt` (None: no
    bound). Floats must be finite too."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __str__(self) -> str:
        parts = [f"{op} {v if isinstance(v, int) else format(v, 'g')}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts) or "any finite number"

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def is_numeric(default: Any) -> bool:
    """Whether a parameter with this default is a number (or a tuple of numbers), so it needs a Range."""
    if isinstance(default, (tuple, list)):
        return all(is_numeric(v) for v in default)
    return isinstance(default, (int, float)) and not isinstance(default, bool)


def declared_ranges(factory: Callable[..., Any]) -> dict[str, Range]:
    """{parameter: Range} from the `Annotated[..., Range(...)]` annotations of `factory` (a class's __init__ or a
    function); a numeric keyword parameter without one is a TypeError at registration."""
    target = factory.__init__ if isinstance(factory, type) else factory
    module = sys.modules.get(getattr(target, "__module__", ""), None)
    hints = typing.get_type_hints(target, globalns=vars(module) if module else None, include_extras=True)
    out = {}
    for name, hint in hints.items():
        found = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)]
        if found:
            out[name] = found[0]
    return out


@dataclass(frozen=True)
class Entry:
    """One registered constructor: its name, the callable, its keyword parameters with defaults, and its doc line."""
    name: str
    factory: Callable[..., Any]
    params: dict[str, Any]
    doc: str
    attrs: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, Range] = field(default_factory=dict)   # numeric parameter -> the values it may take

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

    def __init__(self, stage: str, selector: str | None = "method", default: str | None = None, *,
                 protocol: type | None = None, order: tuple[str, ...] = ()):
        self.stage = stage
        self.selector = selector
        self.default = default      # the entry a section without a selector value gets (declared, not first-come)
        self.protocol = protocol    # every class entry is a subclass of it (instar.core.protocols)
        self.order = order          # listing order of the built-in entries; others follow in registration order
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **attrs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a class or function under `name`; `attrs` are extra facts read without building it."""
        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.stage}: {name!r} is registered twice")
            if self.protocol is not None and not (isinstance(factory, type) and issubclass(factory, self.protocol)):
                raise TypeError(f"{self.stage} entry {name!r} must be a subclass of {self.protocol.__qualname__} "
                                "(instar.core.protocols)")
            doc = (inspect.getdoc(factory) or "").strip().splitlines()
            params = keyword_params(factory)
            ranges = declared_ranges(factory)
            missing = [k for k, v in params.items() if is_numeric(v) and k not in ranges]
            if missing:
                raise TypeError(f"{self.stage} entry {name!r}: numeric parameter {missing[0]!r} declares no range "
                                f"(annotate it Annotated[{type(params[missing[0]]).__name__}, Range(...)])")
            self._entries[name] = Entry(name, factory, params, doc[0] if doc else "", attrs, ranges)
            return factory
        return deco

    def names(self) -> list[str]:
        """Entry names: the declared order first, then any others in registration order."""
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(self._entries, key=lambda n: (rank.get(n, len(rank)), list(self._entries).index(n)))

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


# The pipeline's stages, in preset order, each with its protocol, default entry and listing order. Entries
# register themselves in their own modules; `instar.catalog` imports every built-in one.
IMAGE = Registry("image", selector=None, default="image", protocol=P.ImageStage)
FEATURES = Registry("features", selector="type", default="cnn", protocol=P.FeaturesStage,
                    order=("cnn", "rootsift", "deep-local", "onnx", "fusion"))
TRUNKS = Registry("trunk", selector="arch", default="vgg16",
                  order=("vgg16", "resnet50", "resnet101", "efficientnet-lite0", "efficientnet-lite1",
                         "efficientnet-lite2"))
REGIONS = Registry("regions", default="none", protocol=P.RegionsStage,
                   order=("none", "rmac", "rpn", "selective-search", "sliding"))
POOLINGS = Registry("pooling", default="gem", protocol=P.PoolingStage,
                    order=("asmk", "mac", "spoc", "sum", "gem", "crow", "rmac", "vlad", "none"))
REGION_POOLINGS = Registry("region_pooling", default="none", protocol=P.RegionPoolingStage,
                           order=("none", "max", "sum"))
CODINGS = Registry("coding", default="none", protocol=P.CodingStage, order=("none", "pca-sign", "itq", "lsh", "drh"))
WHITENINGS = Registry("whitening", default="none", protocol=P.WhiteningStage, order=("none", "pca", "weights"))
LOCALS = Registry("local", default="none", protocol=P.LocalStage, order=("none", "rootsift"))
TRAIN = Registry("train", selector=None, default="train", protocol=P.OptionsStage)
SEARCH = Registry("search", selector=None, default="search", protocol=P.OptionsStage)
FILTERS = Registry("filter", default="knn", protocol=P.FilterStage,
                   order=("asmk", "knn", "ann", "regional", "hamming", "hamming-ivf"))
RERANKERS = Registry("rerank", default="none", protocol=P.RerankStage, order=("none", "ca-sr", "sp", "ldrh", "cs-sr", "local-sp"))
EXPANSIONS = Registry("expansion", default="none", protocol=P.ExpansionStage,
                      order=("none", "aqe", "alpha-qe", "gqe", "lqe", "gqe+lqe"))

# The preset's sections in pipeline order, and the registry each one's entry comes from.
SECTIONS: dict[str, Registry] = {
    "image": IMAGE,
    "features": FEATURES,
    "regions": REGIONS,
    "pooling": POOLINGS,
    "whitening": WHITENINGS,
    "region_pooling": REGION_POOLINGS,
    "coding": CODINGS,
    "local": LOCALS,
    "train": TRAIN,
    "search": SEARCH,
    "filter": FILTERS,
    "rerank": RERANKERS,
    "expansion": EXPANSIONS,
}
# sections a search may change without rebuilding the index
SEARCH_SECTIONS = ("search", "filter", "rerank", "expansion")
# sections that are not extraction stages: the search-time stages and the training-set options
NOT_EXTRACTION = ("train",) + SEARCH_SECTIONS
