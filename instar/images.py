"""Deprecated import path, kept for one release: the image stage lives in `instar.extract.images`."""
from .extract.images import *  # noqa: F401,F403
from .extract.images import IMAGE_EXTENSIONS, ImageLoadError, check_box, fit_image, list_images, load_image, resize_longest  # noqa: F401
