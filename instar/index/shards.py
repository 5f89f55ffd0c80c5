"""Sharded indexes: several ordinary indexes of one preset and one fitted model, listed by a manifest.

A manifest is a small JSON file (`NAME.shards.json`):

    {"format": "instar-shards", "version": 1, "model": "<sha256 of the preset's extraction TOML and learned arrays>",
     "shards": ["NAME.shards/000.index", "NAME.shards/001.index", ...]}

Shard paths are relative to the manifest's folder (absolute ones are kept as they are). Every shard must hold
the model the manifest names: a shard fitted on something else (another preset, other training images, another
codebook) describes images in another space, and mixing its scores would be meaningless, so it is refused with an
error naming the shard and both hashes. `create_shards` makes the shards of a new collection (the model fitted
once, then copied); `merge` joins shards into one index (`instar merge`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.progress import Progress, no_progress
from ..presets import Preset
from .index import Index
from .records import Described, IndexError_, stored_name

FORMAT = "instar-shards"
SUFFIX = ".shards.json"
MAX_SHARDS = 1024


def shard_of(name: str, n: int) -> int:
    """The shard that owns the image stored as `name` among `n`: stable, so re-adding it finds its shard."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % n


def split_paths(paths, root, n: int, holder=None) -> list[list]:
    """`paths` (as given) split among `n` shards: the shard `holder(resolved path)` names (the one already storing
    that file, so a changed file replaces its own row), else the owner of its stored name (`shard_of`)."""
    parts: list[list] = [[] for _ in range(n)]
    for given in paths:
        held = holder(str(Path(given).resolve())) if holder is not None else None
        parts[shard_of(stored_name(given, root), n) if held is None else held].append(given)
    return parts


def model_hash(index: Index) -> str:
    """sha256 of what decides an index's descriptors: its preset's extraction settings and its learned arrays."""
    h = hashlib.sha256(index.preset.extraction_toml().encode())
    for key, value in sorted(index.extractor.state().items()):
        a = np.ascontiguousarray(value)
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def is_manifest(path: Path | str) -> bool:
    path = Path(path)
    return path.is_file() and path.name.endswith(".json")


@dataclass
class Manifest:
    path: Path
    model: str
    shards: list[Path]

    @classmethod
    def read(cls, path: Path | str) -> "Manifest":
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexError_(f"{path}: not a readable shard manifest ({e})") from None
        if not isinstance(spec, dict) or spec.get("format") != FORMAT or not isinstance(spec.get("shards"), list) \
                or not spec["shards"] or not isinstance(spec.get("model"), str):
            raise IndexError_(f"{path}: not an instar shard manifest (expected format {FORMAT!r}, a model hash "
                              "and a non-empty list of shards)")
        shards = [Path(s) if os.path.isabs(s) else path.parent / s for s in spec["shards"]]
        return cls(path, spec["model"], shards)

    def write(self) -> None:
        base = self.path.parent.resolve()
        rel = [os.path.relpath(Path(s).resolve(), base) for s in self.shards]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "version": 1, "model": self.model, "shards": rel}, indent=1))
        os.replace(tmp, self.path)

    def open_shards(self, *, weights_mirror: str | None = None) -> list[Index]:
        """Every shard, opened and checked against the manifest's model (a shard with another one is refused)."""
        opened: list[Index] = []
        try:
            for shard in self.shards:
                idx = Index.open(shard, weights_mirror=weights_mirror)
                opened.append(idx)
                got = model_hash(idx)
                if got != self.model:
                    raise IndexError_(f"{shard}: holds another fitted model than the manifest {self.path} names "
                                      f"(shard model {got[:12]}, manifest model {self.model[:12]}; preset "
                                      f"{idx.preset.name!r}); every shard must share one preset and one fitted model")
        except BaseException:
            for idx in opened:
                idx.close()
            raise
        return opened


def write_manifest(path: Path | str, shards: Sequence[Path | str], *, weights_mirror: str | None = None) -> Manifest:
    """A manifest over existing shards; they must all hold one model (the first one's)."""
    path = Path(path)
    if not path.name.endswith(".json"):
        raise IndexError_(f"{path}: a shard manifest is a .json file (e.g. photos{SUFFIX})")
    with Index.open(shards[0], weights_mirror=weights_mirror) as first:
        model = model_hash(first)
    manifest = Manifest(path, model, [Path(s) for s in shards])
    for idx in manifest.open_shards(weights_mirror=weights_mirror):  # refuses a shard with another model before anything is written
        idx.close()
    manifest.write()
    return manifest


def create_shards(path: Path | str, preset: Preset, train: Sequence[Path], n: int, *, trained_on: str = "",
                  progress: Progress = no_progress, weights_mirror: str | None = None) -> Manifest:
    """`n` empty shards of one model (fitted once on `train`) beside a new manifest at `path` (NAME.shards.json)."""
    path = Path(path)
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"shards={n}: must be a whole number from 1 to {MAX_SHARDS}")
    if path.exists():
        raise IndexError_(f"{path}: already exists; open it, or choose another --out")
    folder = path.with_name(path.name.removesuffix(".json") if path.name.endswith(".json") else path.name + ".d")
    shards = [folder / f"{i:03d}.index" for i in range(n)]
    Index.create(shards[0], preset, train, trained_on=trained_on, progress=progress, weights_mirror=weights_mirror).close()
    for s in shards[1:]:
        shutil.copytree(shards[0], s)  # an empty index: the fitted model and an empty store, nothing else
    return write_manifest(path, shards, weights_mirror=weights_mirror)


def merge(shards: Sequence[Path | str], out: Path | str, *, batch_size: int = 256,
          progress: Progress = no_progress) -> Index:
    """One index at `out` holding every live row of `shards` (indexes or manifests, one model), in shard order."""
    paths: list[Path] = []
    for s in shards:
        paths.extend(Manifest.read(s).shards if is_manifest(s) else [Path(s)])
    if not paths:
        raise ValueError("instar merge: name at least one shard")
    out = Path(out)
    if out.exists():
        raise IndexError_(f"{out}: already exists; choose another --out")
    with Index.open(paths[0]) as first:
        model = model_hash(first)
    opened = Manifest(out, model, paths).open_shards()
    try:
        shutil.copytree(paths[0], out, ignore=shutil.ignore_patterns(".lock"))
        merged = Index.open(out)
        for idx in opened[1:]:
            merged.add_descriptions(_rows(idx), batch_size=batch_size, progress=progress)
        return merged
    finally:
        for idx in opened:
            idx.close()


def _rows(index: Index):
    """Every live row of an index as a `Described`, ready for another index's `add_descriptions`."""
    snap = index.snapshot()
    for rec in index.records():
        yield Described(rec.path, rec.name, rec.width, rec.height, rec.sha256,
                        {c: np.asarray(snap.get(c, rec.row)) for c in snap.columns})
