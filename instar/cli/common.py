"""The `instar` app and what its commands share: progress, messages, --set parsing, errors (exit 2)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer
from tqdm import tqdm

from ..core.boxes import parse_box
from ..presets import parse_settings


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="instar: instance-level image search (index a folder, search it with an image or a box, evaluate presets).")


def progress_bar(quiet: bool):
    def wrap(it, desc: str = "", total: int | None = None):  # one bar per job: done/total, images/s, ETA
        return it if quiet else tqdm(it, desc=desc, total=total, unit="img", leave=False, file=sys.stderr)
    return wrap


def say(quiet: bool = False):
    return None if quiet else (lambda line: typer.echo(line, err=True))


def overrides(sets: list[str] | None, weights: str | None) -> dict:
    try:
        out = parse_settings(sets)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if weights:
        out["features.weights"] = weights
    return out


def parse_query_box(box: str | None, query: Path):
    """Four finite numbers x0,y0,x1,y1, or an error naming the query image."""
    if box is None:
        return None
    try:
        return list(parse_box(box))
    except ValueError as e:
        fail(f"{query}: --box {box!r}: {e}")


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


SetOpt = typer.Option(None, "--set", help="Override a preset value, SECTION.KEY=VALUE (repeatable), e.g. pooling.k=128.")
WeightsOpt = typer.Option(None, "--weights", help="CNN weights: imagenet (torchvision's file), random:SEED, a .pth path or a URL.")


def print_skipped(problems: list[tuple[str | Path, str]]) -> None:
    for path, reason in problems:
        typer.secho(f"  skipped {path}: {reason}", fg="yellow", err=True)
