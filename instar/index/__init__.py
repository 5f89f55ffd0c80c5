"""The index: an image collection described by one preset and kept on disk (`index.Index`), and what it records
per image (`records`)."""
from .index import Index
from .owned import remove_owned, remove_unowned
from .records import (DATABASE, FORMAT_VERSION, MODEL, AddReport, Described, ImageRecord, IndexError_, check_description,
                      columns_for, descriptor_problem, stored_name)

__all__ = ["DATABASE", "FORMAT_VERSION", "MODEL", "AddReport", "Described", "ImageRecord", "Index", "IndexError_",
           "check_description", "columns_for", "descriptor_problem", "remove_owned", "remove_unowned", "stored_name"]
