"""`instar` command line: index, search, eval, presets, download, demo. Composes the stages; holds no logic of its own."""
from __future__ import annotations

import logging

from ..distributed.jobs import register_commands
from . import search, training  # noqa: F401  (they add their commands to the app)
from .common import app, fail

register_commands(app, fail)  # instar merge (instar.distributed.jobs)

__all__ = ["app", "main"]


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
