"""`instar index PHOTOS --out INDEX --ray [ADDRESS]`: the extraction on a Ray cluster, the storing in this process.

The driver (this process) holds the index's single writer. It lists the files, skips those already stored with
the same content hash, and hands the rest to Ray Data: `from_items` of the file list, `map_batches` over an
actor pool (`workers` actors, one CPU -- or one GPU with `device="cuda"` -- each) where every actor holds the
fitted extractor, built once from the preset's TOML and the learned arrays fitted before the map (the index's
`model.npz`, shipped with the actors' constructor). Each actor decodes, resizes and describes its batch (the
trunk batched over same-size images, `instar.index.describe.describe_files`) and returns plain columns: path,
name, size, content hash, the description as an in-memory .npz, or the reason the file cannot be used.

Order is preserved (Ray Data's `preserve_order`), so the index holds its rows in the order one process would
store them. A worker that dies is restarted and its batch retried by Ray (Ray Data's actor pool defaults);
whatever arrives twice is stored once, because `Index.add_descriptions` skips a path stored with the same
content hash. Workers import instar from their own environment: a pip-installed instar is used as is; from a
source checkout the package is shipped with the job (`runtime_env` `py_modules`).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..core.progress import Progress, no_progress
from ..extract import images as imgs
from ..index import AddReport, Described, Index
from ..index.shards import shard_of  # noqa: F401  (also imported from here)


def _pack(data: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **data)
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class RayDescriber:
    """The actor class of the map: the fitted extractor, built once per actor; a batch of files -> their columns."""

    def __init__(self, preset_toml: str, state: dict, device: str = "cpu", threads: int = 1):
        import torch

        from ..extract.extractor import Extractor
        from ..presets import preset_from_toml
        torch.set_num_threads(threads)
        extractor = Extractor(preset_from_toml(preset_toml, source="ray worker")).load_state(state)
        self.extractor = extractor.to_device(device)

    def __call__(self, batch: dict) -> dict:
        from ..index.describe import describe_files
        paths = [str(p) for p in batch["path"]]
        outcomes = describe_files(self.extractor, [Path(p) for p in paths])
        out: dict[str, list] = {"path": [], "name": [], "width": [], "height": [], "sha256": [], "blob": [],
                                "error": []}
        for p, name, outcome in zip(paths, batch["name"], outcomes):
            if not isinstance(outcome, str):
                try:
                    digest = imgs.content_hash(Path(p))
                except OSError as e:
                    outcome = f"cannot read file ({e.strerror or e})"
            ok = not isinstance(outcome, str)
            out["path"].append(p)
            out["name"].append(str(name))
            out["width"].append(int(outcome[0]) if ok else 0)
            out["height"].append(int(outcome[1]) if ok else 0)
            out["sha256"].append(digest if ok else "")
            out["blob"].append(_pack(outcome[2]) if ok else b"")
            out["error"].append("" if ok else outcome)
        return {k: np.array(v, dtype=object) for k, v in out.items()}


def runtime_env() -> dict:
    """Ship instar with the job when it runs from a source checkout (not installed where workers can import it)."""
    import instar
    package = Path(instar.__file__).resolve().parent
    if "site-packages" in package.parts or "dist-packages" in package.parts:
        return {}
    return {"py_modules": [str(package)], "env_vars": {"OMP_NUM_THREADS": "1"}}


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` ('auto', host:port, ray://...), or start a local one (None)."""
    import ray
    if ray.is_initialized():
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # instar's own bar reports the job
    ray.init(address="local" if address in (None, "local") else address, runtime_env=runtime_env(), log_to_driver=False,
             include_dashboard=False if address in (None, "local") else None, logging_level="WARNING")


def describe_on_ray(index: Index, todo: Sequence[tuple[Path, str]], *, workers: int, batch_size: int,
                    device: str = "cpu") -> Iterator[dict]:
    """One dict per file of `todo` ((path, name) each), in order: described by a Ray Data actor pool."""
    import ray.data
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"path": str(p), "name": name} for p, name in todo],
                             override_num_blocks=max(1, min(len(todo), 4 * workers)))
    gpu = device.startswith("cuda")
    mapped = ds.map_batches(
        RayDescriber, batch_size=batch_size, batch_format="numpy", concurrency=workers,
        num_cpus=1, num_gpus=1 if gpu else 0,
        fn_constructor_kwargs={"preset_toml": index.preset.to_toml(), "state": index.extractor.state(),
                               "device": "cuda" if gpu else device, "threads": 1},
    )  # Ray Data's actor pools restart a dead actor and retry its batch (max_restarts = max_task_retries = -1)
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["path"])):
            yield {k: batch[k][i] for k in batch}


def index_with_ray(index: Index, paths: Iterable[Path | str], *, root: Path | str | None = None,
                   address: str | None = None, workers: int | None = None, batch_size: int = 16, commit_every: int = 16,
                   device: str = "cpu", progress: Progress = no_progress) -> AddReport:
    """`index.add(paths, root=root)` with the describing done on Ray (see the module's docstring)."""
    return index_shards_with_ray([index], paths, root=root, address=address, workers=workers, batch_size=batch_size,
                                 commit_every=commit_every, device=device, progress=progress)


def index_shards_with_ray(shards: Sequence[Index], paths: Iterable[Path | str], *, root: Path | str | None = None,
                          address: str | None = None, workers: int | None = None, batch_size: int = 16,
                          commit_every: int = 16, device: str = "cpu", progress: Progress = no_progress) -> AddReport:
    """One Ray job describing `paths` for shards of one model (`instar.index.shards`), each image stored by the
    writer of the shard that owns it (`shard_of` its name); with one shard, `index_with_ray`."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers}: a Ray job needs at least one worker")
    first = shards[0]
    report = AddReport()
    todo, failures = [], []
    for p, name in first.named(paths, root):
        owner = shards[shard_of(name, len(shards))] if len(shards) > 1 else first
        try:
            digest = imgs.content_hash(p)
        except OSError as e:
            failures.append((owner, str(p), f"cannot read file ({e.strerror or e})"))
            continue
        if owner.unchanged(p, digest):
            report.unchanged += 1
        else:
            todo.append((p, name))
    if todo:
        connect(address)
        workers = workers or workers_of_cluster()
        pending: dict[int, list[Described]] = {i: [] for i in range(len(shards))}

        def flush(i: int) -> None:
            stored = shards[i].add_descriptions(pending[i], batch_size=commit_every)
            report.added += stored.added
            report.updated += stored.updated
            report.unchanged += stored.unchanged
            pending[i] = []

        rows = describe_on_ray(first, todo, workers=workers, batch_size=batch_size, device=device)
        for row in progress(rows, desc="indexing on ray", total=len(todo)):
            i = shard_of(str(row["name"]), len(shards)) if len(shards) > 1 else 0
            if row["error"]:
                failures.append((shards[i], str(row["path"]), str(row["error"])))
                continue
            pending[i].append(Described(str(row["path"]), str(row["name"]), int(row["width"]), int(row["height"]),
                                        str(row["sha256"]), _unpack(row["blob"])))
            if len(pending[i]) >= commit_every:
                flush(i)
        for i in pending:
            if pending[i]:
                flush(i)
    for idx in shards:
        idx.record_failures([(p, why) for owner, p, why in failures if owner is idx])
    report.failed.extend((p, why) for _, p, why in failures)
    return report


def workers_of_cluster() -> int:
    """Actors to run by default: one per CPU of the cluster joined (`connect` first)."""
    import ray
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def shutdown() -> None:
    import ray
    if ray.is_initialized():
        ray.shutdown()

