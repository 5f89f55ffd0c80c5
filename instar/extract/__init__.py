"""Extraction: one module or package per preset section in pipeline order -- `images` (the image stage),
`features`, `regions`, `pooling`, `whitening` (and `stored_whitening`), `coding` -- and `extractor`, which
composes the stages a preset names into image -> description."""
