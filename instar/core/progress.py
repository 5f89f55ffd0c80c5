"""Progress reporting: a `Progress` wraps an iterable (tqdm's signature: `progress(items, desc=..., total=...)`)."""
from __future__ import annotations

from typing import Callable, Iterable

Progress = Callable[..., Iterable]


def no_progress(it: Iterable, **_: object) -> Iterable:
    """The silent `Progress`: the iterable itself."""
    return it
