"""Pooling stage: conv feature maps (..., C, H, W) -> global vectors (..., C); local descriptors -> VLAD.

The functions are the papers' layers: each CNN pooling reduces the last two (spatial) dimensions of a
float32 torch tensor and returns the un-normalised vector. The registered entries of `POOLINGS` (selected by
a preset's `pooling.method`) wrap them into stage objects: `stage(views, regions, whiten)` turns one image's
features (one map per scale, or one set of local descriptors) into its (D,) float32 vector before
image-level whitening.

Modules: `functional` (the layers as pure functions), `maps` (the CNN-map entries), `vlad`, `asmk` (aggregated
match kernels over local features) and `region` (the `region_pooling` entries).
"""
