"""instar: instance-level image search.

    from instar import Index, search, evaluate, load_preset
    index = Index.create("my.index", load_preset("rootsift-vlad"), train=list_images("train/"))
    index.add(list_images("photos/"), root="photos/")
    hits = search(index, "query.jpg", box=(120, 40, 380, 300), k=20)
"""
from . import catalog  # noqa: F401  (registers every built-in stage entry)
from .extract.extractor import Extractor
from .extract.images import ImageLoadError, list_images
from .index import Index
from .presets import Preset, load_preset
from .search import Hit, ShardedIndex, open_index, search


def evaluate(*args, **kwargs):
    """Evaluate a preset on a benchmark; see `instar.evaluation.evaluate.evaluate`."""
    from .evaluation.evaluate import evaluate as _evaluate
    return _evaluate(*args, **kwargs)


__all__ = ["Extractor", "Hit", "ImageLoadError", "Index", "Preset", "evaluate", "list_images", "load_preset", "open_index", "search", "ShardedIndex"]
__version__ = "0.1.0"
