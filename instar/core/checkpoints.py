"""Weights specifications and checkpoints: `random:SEED`, safe loading of torch checkpoints, seeded builds."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch


class WeightsError(ValueError):
    """A weights specification or checkpoint that cannot be used; the message says why."""


class WeightsDownloadError(WeightsError):
    """Weights could not be downloaded (no network, bad URL, wrong hash)."""


def random_seed(weights: str, what: str = "weights") -> int | None:
    """The SEED of a ``random:SEED`` weights spec, None for any other spec; WeightsError for ``random`` without
    an integer seed."""
    if weights != "random" and not weights.startswith("random:"):
        return None
    _, sep, seed_s = weights.partition(":")
    try:
        return int(seed_s) if sep else int("x")
    except ValueError:
        raise WeightsError(f"random {what} need an integer seed, e.g. 'random:0'; got {weights!r}") from None


def seeded(seed: int, build, *args, **kwargs):
    """`build(*args, **kwargs)` with torch's RNG seeded by `seed`, leaving the global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)


def read_checkpoint(path: str | os.PathLike) -> object:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise not_a_checkpoint(path, e) from e


def not_a_checkpoint(path: Path | str, e: Exception) -> WeightsError:
    text = str(e)
    glob = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if glob:
        return WeightsError(
            f"{path}: checkpoint holds a Python object ({glob.group(1)}) that a safe load "
            f"(torch.load weights_only=True) refuses; re-save it as a plain dict of tensors"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    msg = detail.group(1).strip() if detail else (text.strip().splitlines() or [""])[0]
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return WeightsError(f"{path} is not a readable torch checkpoint ({msg})")
