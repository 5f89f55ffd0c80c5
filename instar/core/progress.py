"""Progress reporting: a `Progress` wraps an iterable (tqdm's signature: `progress(items, desc=..., total=...)`)."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable, Iterator

Progress = Callable[..., Iterable]


def no_progress(it: Iterable, **_: object) -> Iterable:
    """The silent `Progress`: the iterable itself."""
    return it


@contextlib.contextmanager
def phase(text: str, echo: Callable[[str], None] | None) -> Iterator[None]:
    """Say what a long step (fitting a codebook, loading a model) does before it starts, and how long it took
    once it is done; `echo` None: silent."""
    if echo is None:
        yield
        return
    echo(f"{text} ...")
    started = time.perf_counter()
    yield
    echo(f"{text}: done in {time.perf_counter() - started:.1f} s")
