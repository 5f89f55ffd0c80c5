"""What `instar index` runs to describe and store: in this process, in worker processes, or on a Ray cluster."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..core.progress import Progress, no_progress
from ..extract.extractor import check_device
from ..index import AddReport, Index
from ..search.sharded import ShardedIndex


def check_runtime(device: str, ray: str | None) -> None:
    """ValueError for a device this machine cannot use (checked before an index is created; with --ray the
    devices are the workers', checked there)."""
    if ray is None:
        check_device(device)


def add_images(index: Index | ShardedIndex, paths: Sequence[Path], *, root: Path | None = None,
               ray: str | None = None, workers: int = 0, batch_size: int = 16, device: str = "cpu",
               progress: Progress = no_progress) -> AddReport:
    """`index.add` (with `workers` processes on `device`), or with `ray` (an address, 'auto' or 'local') the
    describing on that Ray cluster (`workers` actors; 0: one per CPU of the cluster). Ray is imported only then.
    A sharded index stores each image through the writer of the shard that owns it (`shard_of` its name)."""
    if ray is None:
        return index.add(paths, root=root, batch_size=batch_size, progress=progress, workers=workers, device=device)
    from .ray_index import index_shards_with_ray
    shards = index.shards if isinstance(index, ShardedIndex) else [index]
    return index_shards_with_ray(shards, paths, root=root, address=ray, workers=workers or None,
                                 batch_size=batch_size, commit_every=batch_size, device=device, progress=progress)


def register_commands(app, fail) -> None:
    """Add the scale-out commands to the `instar` CLI (`fail(message)` exits with an error)."""
    import typer

    from ..index import IndexError_
    from ..index.shards import merge

    @app.command("merge")
    def merge_command(shards: list[Path] = typer.Argument(..., metavar="SHARD...", help="Shard indexes or shard manifests (.json), one fitted model."),
                      out: Path = typer.Option(..., "--out", "-o", help="The index to create.")):
        """Join shards (of one preset and one fitted model) into one index, rows in shard order."""
        try:
            with merge(shards, out) as merged:
                typer.echo(f"{out}: {len(merged)} images from {len(shards)} shards, preset {merged.preset.name}")
        except (IndexError_, ValueError) as e:
            fail(str(e))
