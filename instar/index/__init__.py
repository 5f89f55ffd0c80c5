"""The index: an image collection described by one preset and kept on disk (`index.Index`), and what it records
per image (`records`)."""
from .index import Index
from .records import (DATABASE, FORMAT_VERSION, MODEL, AddReport, Described, ImageRecord, IndexError_, check_description,
                      columns_for, descriptor_problem)

__all__ = ["DATABASE", "FORMAT_VERSION", "MODEL", "AddReport", "Described", "ImageRecord", "Index", "IndexError_",
           "check_description", "columns_for", "descriptor_problem"]
