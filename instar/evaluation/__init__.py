"""Benchmark evaluation: metrics (revisitop mAP / mP@k, N-S score), datasets and their download."""
from .datasets import (
    KNOWN_DATASETS,
    Dataset,
    DatasetError,
    MissingImagesError,
    Query,
    Report,
    load_classic,
    load_dataset,
    load_folder,
    load_holidays,
    load_revisited,
    load_ukbench,
)
from .download import DownloadError, UnsafeArchiveError, download_dataset
from .metrics import average_precision, compute_map, ns_score, revisited_protocols

__all__ = [
    "KNOWN_DATASETS",
    "Dataset",
    "DatasetError",
    "MissingImagesError",
    "Query",
    "Report",
    "load_classic",
    "load_dataset",
    "load_folder",
    "load_holidays",
    "load_revisited",
    "load_ukbench",
    "DownloadError",
    "UnsafeArchiveError",
    "download_dataset",
    "average_precision",
    "compute_map",
    "ns_score",
    "revisited_protocols",
]
