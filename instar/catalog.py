"""The catalogue of built-in stage entries: importing this module registers every one of them (in their own
modules). Only the package's entry point (`instar/__init__.py`) imports it."""
from .extract import coding, images, local_keypoints, product_quantisation, stored_whitening, whitening  # noqa: F401
from .presets import options  # noqa: F401
from .extract.features import cnn, deep_local, efficientnet, fusion, local, onnx  # noqa: F401
from .extract.pooling import asmk, identity, maps, region, vlad  # noqa: F401
from .extract.regions import grids, rpn, selective_search, sliding  # noqa: F401
from .search.expansion import drh as drh_expansion, manifold, qe  # noqa: F401
from .search.filter import ann, asmk as asmk_filter, hamming, hamming_ivf, knn, regional  # noqa: F401
from .search.rerank import ca_sr, cs_sr, ldrh, local_sp, none, sp  # noqa: F401
