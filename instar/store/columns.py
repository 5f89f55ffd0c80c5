"""Every column name an index stores, in one place (each stage that contributes a column declares it with these).

- `GLOBAL` (N, D) float32: the global descriptor of each image;
- `BOXES` / `REGIONS` (ragged): region boxes [x0, y0, x1, y1] in original pixels and their descriptors;
- `CODES` (N, B) uint8 / `REGION_CODES` (ragged): packed binary codes of the global vector and of every region;
- `REGION_PQ` (ragged, (m,) uint8): every region's product-quantisation code (`coding.method` pq / opq), in
  place of its float descriptor;
- `ASMK_*` (ragged): an aggregated-match-kernel image's entries -- visual word, item (region), vector or packed
  bits, and the per-item normalisation gamma -- and `ASMK_BOXES`, the box of each item;
- `LOCAL_*` (ragged): the local features kept for spatial verification -- visual word, (x, y), packed residual signs;
- `VERIFY_*` (ragged): the `local` section's compact keypoints -- (x, y) and uint8 RootSIFT descriptors.
"""
GLOBAL, BOXES, REGIONS = "global", "boxes", "regions"
CODES, REGION_CODES = "codes", "region_codes"
REGION_PQ = "region_pq"
ASMK_WORDS, ASMK_CODES, ASMK_VECTORS, ASMK_ITEM, ASMK_GAMMA = (
    "asmk_words", "asmk_codes", "asmk_vectors", "asmk_item", "asmk_gamma")
ASMK_BOXES = "asmk_boxes"
LOCAL_WORDS, LOCAL_XY, LOCAL_CODES = "local_words", "local_xy", "local_codes"
VERIFY_XY, VERIFY_DESC = "verify_xy", "verify_desc"
