"""The stage protocol: one base class per stage kind, declaring the traits the cross-section rules
(`instar.presets.rules`), the extractor and the search pipeline read, with their defaults in one place.

Every registered entry of a stage registry is a subclass of its kind's class here (the registry checks it), so a
trait is always defined: an entry states only the traits in which it differs from the defaults below.
"""
from __future__ import annotations

from typing import Any, ClassVar


class Stage:
    """Traits every stage kind shares, and the hooks the extractor calls on every stage (no-ops by default)."""
    learns: ClassVar[bool] = False  # fitted on training images (`fit_extractor`, `state`, `load_state`)
    fitted: bool = True             # a learned stage says whether it has been fitted
    pixel_columns: tuple[str, ...] = ()  # those of its columns whose items are pixel coordinates (x, y alternating)

    def bind(self, extractor) -> None:
        """Called once every stage of an extractor is built: for a stage that reads another one."""

    def columns(self) -> list:
        """Per-image columns (`instar.store.Column`) it adds to an index, filled by `encode`."""
        return []

    def encode(self, extractor, views, regions_of, description) -> dict:
        """Its columns' data for one image."""
        return {}


class ImageStage(Stage):
    """The `image` section: load, orient, crop the query box, shrink."""


class FeaturesStage(Stage):
    """The `features` section: an image -> maps per scale (`kind = "maps"`) or a set of local features ("local")."""
    kind: ClassVar[str] = "maps"


class RegionsStage(Stage):
    """The `regions` section: candidate object boxes on a map."""
    needs_trunk: ClassVar[bool] = False  # runs on a trunk's map (a learned head), not on any map


class PoolingStage(Stage):
    """The `pooling` section: an image's features (and regions) -> its global vector."""
    input_kind: ClassVar[str] = "maps"        # what the features stage must produce
    needs_regions: ClassVar[bool] = False     # pools over the regions stage's boxes
    whitens_regions: ClassVar[bool] = False   # whitening learned on, and applied to, region vectors (R-MAC)


class WhiteningStage(Stage):
    """The `whitening` section: the pooled vector -> the stored global descriptor."""


class RegionPoolingStage(Stage):
    """The `region_pooling` section: one descriptor per region, stored with the image."""
    stores_regions: ClassVar[bool] = False
    input_kind: ClassVar[str] = "maps"


class CodingStage(Stage):
    """The `coding` section: packed binary codes of the global vector and of every region, or compact codes of
    the regions alone that the region-scoring stages score in place of their float descriptors."""
    binary: ClassVar[bool] = False          # stores packed binary codes (`codes`, `region_codes`) for Hamming stages
    scores_regions: ClassVar[bool] = False  # its region codes are scored in place of float descriptors (`table`, `scores`)
    keep_float_regions: bool = True         # the index keeps the float region descriptors too


class LocalStage(Stage):
    """The `local` section: local features stored beside the global vector for verification at search time."""


class OptionsStage(Stage):
    """A section of plain options (`train`, `search`), not a pipeline step."""


class SearchStage(Stage):
    """Traits of the search-time stages (filter, re-ranker, expansion): what they need the index to store."""
    needs_regions: ClassVar[bool] = False             # compares stored regions
    reads_region_descriptors: ClassVar[bool] = False  # reads the float region descriptors (not only their codes)
    scores_compact_regions: ClassVar[bool] = False    # reads only region similarities, which compact codes can give
    region_pooling: ClassVar[tuple[str, ...]] = ()    # the region poolings whose descriptors it can read (() = any)
    needs_codes: ClassVar[bool] = False               # compares binary codes (a coding stage must be set)
    top: int = 0                                      # how deep into the ranking it reads (re-rankers, expansions)

    @staticmethod
    def requires(sections: dict[str, dict[str, Any]]) -> str | None:
        """Its own condition on the preset's other sections: why it does not fit them, or None."""
        return None


class FilterStage(SearchStage):
    """The `filter` section: ranks the whole database (`filter(db, query, k) -> Ranking`)."""


class RerankStage(SearchStage):
    """The `rerank` section: re-scores the head of a ranking (`rerank(db, query, ranking) -> Ranking`)."""


class ExpansionStage(SearchStage):
    """The `expansion` section: a new query from the top of a ranking, searched again
    (`expansion(db, query, ranking, k) -> Ranking`)."""

    def before_rerank(self, db, query, ranking):
        """A refinement of the filter's list before the re-ranker sees it (DRH's gQE); by default none."""
        return ranking
