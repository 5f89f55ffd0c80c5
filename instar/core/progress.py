"""Progress reporting: a `Progress` wraps an iterable (tqdm's signature: `progress(items, desc=..., total=...)`)."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable, Iterable, Iterator

Progress = Callable[..., Iterable]


def no_progress(it: Iterable, **_: object) -> Iterable:
    """The silent `Progress`: the iterable itself."""
    return it


# a phase says what it does only once it has run this long (seconds; INSTAR_PHASE_AFTER overrides): quick steps,
# and errors found at once, print nothing before their result
PHASE_AFTER = 1.0


@contextlib.contextmanager
def phase(text: str, echo: Callable[[str], None] | None) -> Iterator[None]:
    """Say what a long step (fitting a codebook, loading a model) does once it has run `PHASE_AFTER` seconds, and
    how long it took when it is done; `echo` None: silent."""
    if echo is None:
        yield
        return
    after = float(os.environ.get("INSTAR_PHASE_AFTER", PHASE_AFTER))
    started = time.perf_counter()
    said = threading.Event()

    def announce() -> None:
        said.set()
        echo(f"{text} ...")
    timer = threading.Timer(after, announce)
    timer.daemon = True
    if after <= 0:
        announce()
    else:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if said.is_set():
        echo(f"{text}: done in {time.perf_counter() - started:.1f} s")
