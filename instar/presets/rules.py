"""The rules that tie one section's choice to another's, read from the entries' declared traits
(`instar.core.protocols`): which pooling fits which features, which search stage needs regions or codes."""
from __future__ import annotations

from typing import Any

from ..core.registry import CODINGS, EXPANSIONS, FEATURES, FILTERS, POOLINGS, REGION_POOLINGS, REGIONS, RERANKERS, SECTIONS, TRUNKS


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
        if entry.needs_regions and not stores:
            return (f"{section}.method {entry.name!r} compares regions: set region_pooling.method "
                    "(e.g. 'max') so that the index stores region descriptors")
        keeps_float = sections["coding"].get("keep_float_regions", coding.keep_float_regions)
        if entry.reads_region_descriptors and not keeps_float and not (
                coding.scores_regions and entry.scores_compact_regions):
            setting = ("coding.keep_float_regions = false" if "keep_float_regions" in sections["coding"]
                       else f"coding.method = {coding.name!r}")
            return (f"{section}.method {entry.name!r} compares float region descriptors, which this preset does not "
                    f"keep ({setting}: only their {sections['coding']['method']} codes)")
        allowed = entry.region_pooling  # an entry that reads one kind of region descriptor
        if allowed and sections["region_pooling"]["method"] not in allowed:
            return (f"{section}.method {entry.name!r} reads {' or '.join(allowed)}-pooled region descriptors: set "
                    f"region_pooling.method = {allowed[0]!r}")
        if entry.needs_codes and not coding.binary:
            return (f"{section}.method {entry.name!r} compares binary codes: set coding.method "
                    "(e.g. 'drh') so that the index stores them")
        why = entry.requires(sections)  # a search stage's own condition on what the index stores
        if why:
            return why
    regions = REGIONS.entry(sections["regions"]["method"])
    if regions.needs_trunk:
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
    return any(reg.entry(sections[name][reg.selector] if reg.selector else reg.default).learns
               for name, reg in SECTIONS.items())
