"""Feature extraction: CNN trunks and the descriptors built on them."""
