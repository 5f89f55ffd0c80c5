"""Learning for retrieval (issue 12): R-MAC as one trainable network, triplet / contrastive training with hard
negatives from a folder of the user's own photos (labelled by sub-folder, or grouped by instar itself through
verified local-feature matches), and the class-specific spatial re-ranking (CS-SR) of Salvador et al.

Modules:

- `rmac_net`: R-MAC as a differentiable network (Gordo et al. sec. 3.1): trunk -> RoI max-pooling over the
  regions stage's boxes -> L2 -> "PCA" as a shift plus a fully connected layer -> L2 -> sum -> L2, summed over
  the preset's scales; at initialisation it gives the `rmac` preset's descriptor. Trunks are split into a frozen
  part (its output cached) and a trained part (`TRUNK_SPLITS`).
- `stored_whitening`: the `weights` whitening entry, the learned "PCA" layer read back from the checkpoint.
- `data`: training sets from a folder (one sub-folder per object) or a CSV of (image, object).
- `losses`: the ranking triplet loss (Gordo et al. eq. 1), the contrastive loss (survey eq. 13) and their
  hard-example mining over an embedded pool.
- `train`: the training loop (mining every 16 updates, 64 tuples per update, SGD), validation mAP per epoch,
  checkpoints that resume, and the saved model.
- `mining`: groups of an unlabelled folder from RootSIFT + RANSAC verified pairs (Gordo et al. sec. 4).
- `cssr`: CS-SR's classifier over RoI-pooled proposal features, its fine-tuning (strategies #1 and #2) and the
  `cs-sr` re-ranker entry.
"""
