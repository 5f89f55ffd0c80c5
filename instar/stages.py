"""The pipeline's stages in preset order, each a registry of named entries (importing this module registers
every built-in entry), and the few rules that tie one stage's choice to another's."""
from __future__ import annotations

from typing import Any

from . import asmk, expansion, filter, images, pooling, regions, rerank, spatial, whitening  # noqa: F401  (modules register their entries)
from . import coding, drh  # noqa: F401  (after expansion: its none / aqe / alpha-qe are listed first)
from .features import cnn, deep_local, efficientnet, local  # noqa: F401
from .regions import rpn, selective_search, sliding  # noqa: F401
from .learning import cssr, stored_whitening  # noqa: F401
from .registry import (CODINGS, EXPANSIONS, FEATURES, FILTERS, IMAGE, POOLINGS, REGION_POOLINGS, REGIONS, RERANKERS,
                       SEARCH, TRAIN, TRUNKS, WHITENINGS, Registry)

SECTIONS: dict[str, Registry] = {
    "image": IMAGE,
    "features": FEATURES,
    "regions": REGIONS,
    "pooling": POOLINGS,
    "whitening": WHITENINGS,
    "region_pooling": REGION_POOLINGS,
    "coding": CODINGS,
    "train": TRAIN,
    "search": SEARCH,
    "filter": FILTERS,
    "rerank": RERANKERS,
    "expansion": EXPANSIONS,
}


@TRAIN.register("train")
class TrainingSet:
    """How the learned stages (codebook, whitening) see their separate training images: at most `max_images`."""

    def __init__(self, *, max_images: int = 2000):
        self.max_images = max_images


@SEARCH.register("search")
class SearchOptions:
    """How many hits a search returns by default (`k`)."""

    def __init__(self, *, k: int = 100):
        self.k = k


def incompatibility(sections: dict[str, dict[str, Any]]) -> str | None:
    """Why one stage's choice does not fit another's, or None."""
    features = FEATURES.entry(sections["features"]["type"])
    pool = POOLINGS.entry(sections["pooling"]["method"])
    if features.kind != pool.input_kind:
        return (f"pooling.method {pool.name!r} does not fit features.type {features.name!r} "
                f"({pool.name} pools {pool.input_kind}, {features.name} gives {features.kind})")
    if pool.needs_regions and sections["regions"]["method"] == "none":
        return f"pooling.method {pool.name!r} pools over regions: set regions.method (e.g. 'rmac')"
    region_pool = REGION_POOLINGS.entry(sections["region_pooling"]["method"])
    if region_pool.stores_regions and region_pool.input_kind != features.kind:
        return (f"region_pooling.method {region_pool.name!r} does not fit features.type {features.name!r} "
                f"({region_pool.name} pools {region_pool.input_kind}, {features.name} gives {features.kind})")
    stores = region_pool.stores_regions
    coding = CODINGS.entry(sections["coding"]["method"])
    if coding.learns and not stores:
        return (f"coding.method {coding.name!r} is learned on, and codes, region descriptors: set "
                "region_pooling.method (e.g. 'max')")
    for section, registry in (("filter", FILTERS), ("rerank", RERANKERS), ("expansion", EXPANSIONS)):
        entry = registry.entry(sections[section]["method"])
        if getattr(entry, "needs_regions", False) and not stores:
            return (f"{section}.method {entry.name!r} compares regions: set region_pooling.method "
                    "(e.g. 'max') so that the index stores region descriptors")
        if getattr(entry, "reads_region_descriptors", False) and not sections["coding"].get("keep_float_regions", True):
            return (f"{section}.method {entry.name!r} compares float region descriptors, which this preset does not "
                    f"keep (coding.keep_float_regions = false: only their {sections['coding']['method']} codes)")
        allowed = getattr(entry, "region_pooling", None)  # an entry that reads one kind of region descriptor
        if allowed and sections["region_pooling"]["method"] not in allowed:
            return (f"{section}.method {entry.name!r} reads {' or '.join(allowed)}-pooled region descriptors: set "
                    f"region_pooling.method = {allowed[0]!r}")
        if getattr(entry, "needs_codes", False) and not coding.learns:
            return (f"{section}.method {entry.name!r} compares binary codes: set coding.method "
                    "(e.g. 'drh') so that the index stores them")
        requires = getattr(entry, "requires", None)  # a search stage's own condition on what the index stores
        why = requires(sections) if requires is not None else None
        if why:
            return why
    regions = REGIONS.entry(sections["regions"]["method"])
    if getattr(regions, "needs_trunk", False):
        if features.kind == "local" and "arch" not in features.params:
            return (f"regions.method {regions.name!r} runs on a trunk's map; features.type {features.name!r} has none "
                    "(use a grid or selective search, or deep local features)")
        # a learned head (the RPN) was trained on one trunk's tap; '' is the trunk's default tap, checked on use
        for key in ("arch", "layer"):
            want, have = sections["regions"][key], sections["features"][key]
            if have and want != have:
                return (f"regions.{key} {want!r} (the trunk the {regions.name} head was trained on) does not match "
                        f"features.{key} {have!r}")
    if features.kind == "maps":
        arch, layer = sections["features"]["arch"], sections["features"]["layer"]
        layers = TRUNKS.entry(arch).layers
        if layer and layer not in layers:
            return f"features.layer {layer!r} is not a layer of {arch} (its layers: {', '.join(layers)})"
    return None


def fitting_entries(sections: dict[str, dict[str, Any]], section: str) -> list[str]:
    """The entries of `section` (with their default parameters) that fit the other sections, i.e. that
    `incompatibility` accepts: what a search-time section of an existing index can be switched to."""
    registry = SECTIONS[section]
    out = []
    for name in registry.names():
        trial = dict(sections)
        trial[section] = {registry.selector: name, **registry.entry(name).params}
        if incompatibility(trial) is None:
            out.append(name)
    return out


def learns(sections: dict[str, dict[str, Any]]) -> bool:
    """Whether any chosen stage is learned from training images."""
    return any(getattr(reg.entry(sections[name][reg.selector] if reg.selector else reg.default), "learns", False)
               for name, reg in SECTIONS.items())
