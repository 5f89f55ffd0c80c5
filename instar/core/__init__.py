"""Helpers every layer may use: registries and the section table, stage protocols, norms, PCA, binary codes,
ranking arithmetic, the k-means codebook, checkpoints, boxes and progress. Imports nothing else of instar."""
