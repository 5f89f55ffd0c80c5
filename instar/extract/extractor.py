"""Descriptor extraction: composes the stages a preset names (image -> features -> regions -> pooling -> whitening).

Each stage is an object built from its preset section through its registry (`instar.core.registry.SECTIONS`); the
extractor only wires them together, so a new trunk, region method, pooling or whitening is a new registry
entry, never a branch here.

`Extractor(preset)` turns an image file (optionally a box on it) into one (D,) float32 L2-normalised global
descriptor. Stages that learn something (a VLAD codebook, a PCA-whitening) are `fit` on a separate image set
first; their arrays round-trip through `state()` / `load_state()` (keys prefixed by section) and are stored
with an index.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.progress import Progress, no_progress
from ..core.registry import NOT_EXTRACTION, SECTIONS
from ..presets import Preset
from . import images as imgs
from .regions import MapGeometry, Regions

log = logging.getLogger(__name__)


@dataclass
class Description:
    """What the extractor says about one image: its global `vector` (D,) float32 (L2-normalised) and, when the
    preset stores regions, their `boxes` (R, 4) float32 [x0, y0, x1, y1] in the described image's pixels and
    their descriptors `regions` (R, Dr) float32. `size` is the described (prepared) image's (W, H)."""
    vector: np.ndarray
    size: tuple[int, int]
    boxes: np.ndarray | None = None
    regions: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # data of the columns later stages contribute
    image: object = field(default=None, repr=False)  # the prepared PIL image, for stages that read its pixels


def check_device(device: str) -> None:
    """ValueError unless torch can run a trunk on `device` (cpu, cuda, cuda:N, mps) on this machine."""
    import torch
    if device != "cpu" and not (device == "mps" or device.startswith("cuda")):
        raise ValueError(f"--device {device!r}: expected cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device on this machine")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: torch sees no Apple MPS device on this machine")


class Extractor:
    """Image -> (D,) float32 L2-normalised descriptor (and, per preset, regions and more), as the preset prescribes.

    Every extraction section of the preset becomes a stage object, kept in `stages` (pipeline order) and as an
    attribute of its section's name (`extractor.pooling`, `extractor.whitening`, ...). Stage protocol, beyond
    the call each section's stages share:

    - `learns` (bool) / `fitted`: learned from training images by `fit_extractor(extractor, images, rng,
      progress)`, in pipeline order (each stage may describe the training images with the stages before it);
      `state()` / `load_state(arrays)` round-trip what it learned.
    - `columns()` -> [store.Column]: per-image data the stage adds to an index, produced by
      `encode(extractor, views, regions_of, description) -> {column: array}` in `describe_full`.
    - `bind(extractor)`: called once every stage is built, for a stage that reads another one (e.g. the
      `weights` whitening, stored with the trunk's checkpoint and read from the features stage on first use).
    """

    def __init__(self, preset: Preset, *, weights_mirror: str | None = None):
        self.preset = preset
        self.weights_mirror = weights_mirror
        self.stages = {section: registry.build_section(preset[section])
                       for section, registry in SECTIONS.items() if section not in NOT_EXTRACTION}
        for section, stage in self.stages.items():
            setattr(self, section, stage)
        if hasattr(self.features, "weights_mirror"):
            self.features.weights_mirror = weights_mirror
        for stage in self.stages.values():
            stage.bind(self)

    # --- configuration -------------------------------------------------------------------------
    @property
    def learned(self) -> dict[str, object]:
        """The stages learned from training images, by section, in pipeline order."""
        return {name: st for name, st in self.stages.items() if st.learns}

    @property
    def is_fitted(self) -> bool:
        return all(st.fitted for st in self.learned.values())

    def columns(self) -> list:
        """Per-image data an index of this extractor stores, beyond the global vector and the regions."""
        return [c for st in self.stages.values() for c in st.columns()]

    def pixel_columns(self) -> list[str]:
        """Those of `columns()` whose items are pixel coordinates of the described image, x and y alternating
        ([x, y] points, [x0, y0, x1, y1] boxes): an index scales them to the original image, like region boxes."""
        return [name for st in self.stages.values() for name in st.pixel_columns]

    @property
    def model(self):
        """The CNN trunk of a map-features preset, loaded on first use."""
        return self.features.model

    @property
    def extras(self) -> dict:
        return getattr(self.features, "extras", {})

    # --- describing ----------------------------------------------------------------------------
    def load(self, path: Path | str, box: Sequence[float] | None = None):
        """The image stage: load, crop to `box` at full resolution, shrink."""
        return self.image(path, box)

    def prepare_loaded(self, image, box: Sequence[float] | None = None, *, path: Path | str = "image"):
        """The image stage on an image already loaded (`images.load_image`): crop to `box`, shrink."""
        return self.image.prepare_loaded(image, box, path=path)

    @property
    def stores_regions(self) -> bool:
        """Whether each image also gets region boxes and region descriptors."""
        return self.region_pooling.stores_regions

    @property
    def stores_region_descriptors(self) -> bool:
        """Whether an index keeps the float region descriptors too (a coding may keep only their codes)."""
        return self.stores_regions and getattr(self.stages.get("coding"), "keep_float_regions", True)

    def regions_of(self, image, maps, stride: int | None = None) -> Callable[[object], Regions]:
        """The regions stage bound to one image: a (C, h, w) map of it (any of its scales) -> `Regions`. `stride`
        is the map's (default: the trunk's)."""
        W, H = image.size
        w0, h0 = maps[0].shape[-1], maps[0].shape[-2]
        if stride is None:
            stride = getattr(self.features.model, "stride", 1) if self.features.kind == "maps" else 1

        def of(fmap) -> Regions:
            w, h = fmap.shape[-1], fmap.shape[-2]
            size = (W, H) if (w, h) == (w0, h0) else (max(1, round(W * w / w0)), max(1, round(H * h / h0)))
            return self.regions(fmap, MapGeometry.of(size, (w, h), stride), image)
        return of

    def _pooled(self, views, regions_of) -> np.ndarray:
        """Pooled (D0,) vector of one image's features, before image-level whitening (region-level applied)."""
        region_whiten = self.whitening.transform if self.pooling.whitens_regions else None
        return self.pooling(views, regions_of, region_whiten)

    def _vector(self, views, regions_of) -> np.ndarray:
        v = self._pooled(views, regions_of)
        if not self.pooling.whitens_regions:
            v = self.whitening.apply(v)
        return np.asarray(v, dtype=np.float32)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"preset {self.preset.name!r} must be fitted on training images before describing")

    def describe_image(self, image, views=None) -> np.ndarray:
        """A prepared PIL image -> (D,) float32, L2-normalised. `views`: its features when already computed."""
        self._check_fitted()
        return self._vector(*self.views_and_regions(image, views))

    def describe_full(self, image, views=None) -> Description:
        """A prepared PIL image -> its `Description`: the global vector and, if the preset stores them, its regions.
        `views`: its features when already computed (e.g. by `features_batch`)."""
        self._check_fitted()
        views, regions_of = self.views_and_regions(image, views)
        out = Description(self._vector(views, regions_of), image.size, image=image)
        if self.stores_regions:
            regions = regions_of(views[0])
            out.boxes = regions.pixels.astype(np.float32)
            out.regions = self.region_pooling(views, regions)
        for st in self.stages.values():
            out.extra.update(st.encode(self, views, regions_of, out))
        return out

    def features_batch(self, images: list) -> list:
        """The features of several prepared images, as `features(image)` gives each: images of one size share one
        batched trunk forward per scale (a size bucket); other features stages run one image at a time."""
        batch = getattr(self.features, "batch", None)
        if batch is None:
            return [self.features(im) for im in images]
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            buckets.setdefault(im.size, []).append(i)
        out: list = [None] * len(images)
        for members in buckets.values():
            for i, views in zip(members, batch([images[i] for i in members])):
                out[i] = views
        return out

    def to_device(self, device: str) -> "Extractor":
        """Run the trunk on `device` (cpu, cuda, cuda:N, mps): a runtime choice, never part of the preset."""
        check_device(device)
        model = getattr(self.features, "model", None)
        if model is not None and hasattr(model, "to"):
            model.to(device)
        return self

    def describe_box(self, image, box: Sequence[float]) -> np.ndarray:
        """The region descriptor of a pixel `box` on a prepared image, pooled like the stored regions
        (CA-SR's query descriptor: the box warped onto the whole image's map). (Dr,) float32."""
        self._check_fitted()
        views = self.features(image)
        geometry = MapGeometry.of(image.size, (views[0].shape[-1], views[0].shape[-2]),
                                  getattr(self.features.model, "stride", 1))
        return self.region_pooling(views, Regions.from_pixels(np.asarray([box], np.float32), geometry))[0]

    def describe(self, path: Path | str, box: Sequence[float] | None = None) -> np.ndarray:
        """An image file (cropped to `box` at full resolution first) -> (D,) float32, L2-normalised."""
        return self.describe_image(self.load(path, box))

    # --- learning ------------------------------------------------------------------------------
    def fit(self, paths: Sequence[Path], progress: Progress = no_progress, seed: int = 0) -> "Extractor":
        """Learn what the preset's stages learn (VLAD codebook, PCA-whitening) from a separate set of image files."""
        paths = list(paths)
        if not paths:
            raise ValueError(f"preset {self.preset.name!r} needs training images (codebook/whitening); none given")
        rng = np.random.default_rng(seed)
        limit = self.preset["train"]["max_images"]
        if len(paths) > limit:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
        loaded = []
        for p in progress(paths, desc="loading training images"):
            try:
                loaded.append(self.load(p))
            except imgs.ImageLoadError as e:
                log.warning("training set: skipping %s", e)
        if not loaded:
            raise ValueError(f"preset {self.preset.name!r}: none of the {len(paths)} training images could be read")
        for st in self.learned.values():  # in pipeline order: each stage learns from the fitted ones before it
            st.fit_extractor(self, loaded, rng, progress)
        return self

    def views_and_regions(self, image, views=None):
        """One prepared image's features (maps per scale, or local features; computed unless given) and its regions
        stage bound to it. Local features are given regions when their stage has a map for them (`region_map`:
        a deep trunk's map, or a notional grid for SIFT), the regions' pixel boxes saying which features each holds."""
        views = self.features(image) if views is None else views
        if self.features.kind == "maps":
            return views, self.regions_of(image, views)
        region_map = getattr(self.features, "region_map", None)
        if region_map is None:
            return views, None
        fmap, stride = region_map(image, views)
        bound = self.regions_of(image, [fmap], stride)
        return views, lambda of_map=fmap: bound(of_map)  # local features: `regions_of()` gives the image's regions

    def state(self) -> dict[str, np.ndarray]:
        """Learned arrays, prefixed by section name, for storage with an index."""
        out: dict[str, np.ndarray] = {}
        for section, stage in self.learned.items():
            if stage.fitted:
                out.update({f"{section}.{k}": v for k, v in stage.state().items()})
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> "Extractor":
        for section, stage in self.learned.items():
            part = {k[len(section) + 1:]: v for k, v in state.items() if k.startswith(section + ".")}
            if part:
                stage.load_state(part)
        return self
