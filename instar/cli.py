"""`instar` command line: index, search, eval, presets, download, demo. Composes the stages; holds no logic of its own."""
from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from tqdm import tqdm

from .core.boxes import parse_box
from .core.progress import phase
from .core.registry import EXPANSIONS, SEARCH_SECTIONS
from .distributed.jobs import add_images, check_runtime, register_commands
from .extract.images import ImageLoadError, list_images
from .index import Index, IndexError_
from .presets import DEFAULT_PRESET, PresetError, builtin_names, load_preset, parse_settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="instar: instance-level image search (index a folder, search it with an image or a box, evaluate presets).")


def _progress(quiet: bool):
    def wrap(it, desc: str = "", total: int | None = None):  # one bar per job: done/total, images/s, ETA
        return it if quiet else tqdm(it, desc=desc, total=total, unit="img", leave=False, file=sys.stderr)
    return wrap


def _say(quiet: bool = False):
    return None if quiet else (lambda line: typer.echo(line, err=True))


def _overrides(sets: list[str] | None, weights: str | None) -> dict:
    try:
        out = parse_settings(sets)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if weights:
        out["features.weights"] = weights
    return out


def _parse_box(box: str | None, query: Path):
    """Four finite numbers x0,y0,x1,y1, or an error naming the query image."""
    if box is None:
        return None
    try:
        return list(parse_box(box))
    except ValueError as e:
        _fail(f"{query}: --box {box!r}: {e}")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


SetOpt = typer.Option(None, "--set", help="Override a preset value, SECTION.KEY=VALUE (repeatable), e.g. pooling.k=128.")
WeightsOpt = typer.Option(None, "--weights", help="CNN weights: imagenet (torchvision's file), random:SEED, a .pth path or a URL.")
register_commands(app, _fail)  # instar merge (instar.distributed.jobs)


def _print_skipped(problems: list[tuple[str | Path, str]]) -> None:
    for path, reason in problems:
        typer.secho(f"  skipped {path}: {reason}", fg="yellow", err=True)


@app.command()
def index(photos: Path = typer.Argument(..., help="Folder of images (searched recursively)."),
          out: Path = typer.Option(..., "--out", "-o", help="Index directory to create, or to resume / add to."),
          preset: Optional[str] = typer.Option(None, help=f"Preset name or .toml file (default {DEFAULT_PRESET}; an existing index keeps its own)."),
          train: Optional[Path] = typer.Option(None, help="Separate folder of images to learn the codebook / whitening on (default: the indexed photos)."),
          sets: Optional[list[str]] = SetOpt, weights: Optional[str] = WeightsOpt,
          batch_size: int = typer.Option(16, help="Images per commit (an interruption loses at most one batch) and per batched trunk forward in workers."),
          workers: int = typer.Option(0, min=0, help="Worker processes describing images (0: this process); with --ray, actors (default: the cluster's CPUs)."),
          device: str = typer.Option("cpu", help="Where the trunk runs: cpu, cuda, cuda:N or mps (not part of the preset)."),
          ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Describe on a Ray cluster: its address (host:port, auto), or local to start one here."),
          prune: bool = typer.Option(False, "--prune", help="Also drop indexed images whose files are gone."),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Index a folder of photos; re-running resumes an interrupted run, adds new or changed files, and checks the
    stored rows (damaged ones are described again)."""
    if batch_size < 1:
        _fail(f"--batch-size {batch_size}: must be at least 1")
    try:
        check_runtime(device, ray)
        problems: list[tuple[Path, str]] = []
        paths = list_images(photos, problems=problems)
        _print_skipped(problems)
        if not paths:
            _fail(f"{photos}: no image files found")
        if out.exists():
            idx = Index.open(out)
            asked = (load_preset(preset) if preset is not None else idx.preset).with_overrides(_overrides(sets, weights))
            differ = idx.preset.stored_differences(asked)
            if differ or asked.extraction_toml() != idx.preset.extraction_toml():
                idx.close()
                _fail(f"{out}: was built with another preset configuration ({idx.preset.name}): "
                      f"{'; '.join(differ) or f'preset {asked.name!r}'}; omit --preset/--set to add to it, or choose "
                      "another --out")
            searching = [s for s in _overrides(sets, None) if s.partition(".")[0] in SEARCH_SECTIONS]
            if searching:
                typer.echo(f"note: {', '.join(searching)}: search-time settings are not stored in the index; give them "
                           "to instar search --set", err=True)
            damaged = idx.verify()
            typer.echo(f"resuming {out}: {len(idx)} images already indexed; checked their stored rows: "
                       f"{len(damaged)} damaged", err=True)
        else:
            p = load_preset(preset or DEFAULT_PRESET).with_overrides(_overrides(sets, weights))
            train_paths = list_images(train) if train else paths
            trained_on = str(train) if train else f"the indexed collection {photos}"
            with phase(f"learning preset {p.name}'s model on {len(train_paths)} training images", _say(quiet or not p.needs_training)):
                idx = Index.create(out, p, train_paths, trained_on=trained_on, progress=_progress(quiet))
            damaged = []
        # the summary below lists every skipped file with its reason; the library's per-file log lines would repeat it
        logging.getLogger("instar.index").setLevel(logging.ERROR)
        with idx:
            if damaged:
                for rec, reason in damaged:
                    typer.secho(f"  damaged {rec.name}: {reason}; describing it again", fg="yellow", err=True)
                fixed = idx.reextract([rec for rec, _ in damaged], batch_size=batch_size, progress=_progress(quiet))
                typer.echo(f"re-extracted {fixed.added + fixed.updated} of {len(damaged)} damaged rows", err=True)
                _print_skipped(fixed.failed)
            if prune:
                gone = idx.prune()
                typer.echo(f"pruned {len(gone)} images whose files are gone", err=True)
            report = add_images(idx, paths, root=photos, ray=ray, workers=workers, batch_size=batch_size, device=device, progress=_progress(quiet))
            typer.echo(f"{out}: {len(idx)} images (added {report.added}, updated {report.updated}, "
                       f"unchanged {report.unchanged}, unreadable {len(report.failed) + len(problems)}), "
                       f"preset {idx.preset.name}, dim {idx.dim}")
            _print_skipped(report.failed)
    except (PresetError, IndexError_, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail(f"{out}: interrupted; what was committed is kept, run the same command again to resume", code=130)


@app.command()
def search(index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index, or a shard manifest (.json)."), query: Path = typer.Argument(...),
           box: Optional[str] = typer.Option(None, help="Query box x0,y0,x1,y1 in the query image's pixels."),
           k: int = typer.Option(20, "-k", help="Number of hits (at least 1)."),
           expansion: Optional[str] = typer.Option(None, help=f"Query expansion: {' | '.join(EXPANSIONS.names())} (default: the preset's)."),
           sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a search-time value (search, filter, rerank, expansion), e.g. rerank.top=50."),
           html: Optional[Path] = typer.Option(None, help="Write an HTML page of the hits here."),
           as_json: bool = typer.Option(False, "--json", help="Print hits as JSON (with each hit's box, original pixels).")):
    """Search an index with a query image, or a box drawn on it."""
    from .search import open_index, search as run_search
    from .tools.report import page_target_problem, write_hits_html
    if k < 1:
        _fail(f"-k {k}: the number of hits must be at least 1")
    if expansion is not None and expansion not in EXPANSIONS:
        _fail(f"--expansion {expansion!r}: expected one of {', '.join(EXPANSIONS.names())}")
    query_box = _parse_box(box, query)
    if html is not None:
        problem = page_target_problem(html)
        if problem:
            _fail(f"{html}: {problem}")
    try:
        with phase(f"opening {index_dir} (its preset's model) and ranking it for {query.name}", _say()), open_index(index_dir) as idx:
            hits = run_search(idx, query, box=query_box, k=k, expansion=expansion, overrides=_overrides(sets, None))
    except (IndexError_, ImageLoadError, PresetError) as e:
        _fail(str(e))
    except ValueError as e:
        _fail(f"{query}: {e}")
    if as_json:
        typer.echo(json.dumps([h.__dict__ for h in hits], indent=1))
    else:
        for h in hits:
            typer.echo(f"{h.rank:4d}  {h.score:.4f}  {h.name}")
    if html:
        missing = [h for h in hits if not os.path.isfile(h.path)]
        for h in missing:
            typer.secho(f"  warning: {h.path}: indexed file is gone; the page shows a placeholder "
                        f"(drop it with: instar remove {shlex.quote(str(index_dir))} {shlex.quote(h.name)})", fg="yellow", err=True)
        try:
            write_hits_html(html, query, query_box, hits, title=f"instar: {query.name}")
        except OSError as e:
            _fail(f"{html}: cannot write the page ({e.strerror or e})")
        typer.echo(f"wrote {html}", err=True)


@app.command()
def remove(index_dir: Path = typer.Argument(..., metavar="INDEX"),
           names: list[str] = typer.Argument(..., metavar="NAME_OR_PATH...", help="Stored names (as search prints them) or file paths.")):
    """Remove images from an index. Their stored rows become tombstones; search never returns them again."""
    try:
        with Index.open(index_dir) as idx:
            removed = idx.remove(names)
            left = len(idx)
    except IndexError_ as e:
        _fail(str(e))
    for rec in removed:
        typer.echo(f"removed {rec.name}")
    typer.echo(f"{index_dir}: {left} images")


@app.command("eval")
def eval_(dataset: str = typer.Argument(..., help="roxford5k, rparis6k, oxford5k, paris6k, holidays, ukbench, folder, or NAME with a gnd_NAME.pkl in --data."),
          data: Optional[Path] = typer.Option(None, help="Dataset folder (published layout)."),
          gnd: Optional[Path] = typer.Option(None, help="Revisited ground-truth pickle, if not in --data."),
          images: Optional[Path] = typer.Option(None, help="Image folder, if not in --data."),
          preset: str = typer.Option(DEFAULT_PRESET, help="Preset name or .toml file."),
          train: Optional[Path] = typer.Option(None, help="Separate image folder for codebook / whitening (default: the database itself, reported as such)."),
          workdir: Optional[Path] = typer.Option(None, help="Keep the index here (resumable, reused)."),
          expansion: Optional[str] = typer.Option(None, help=f"Query expansion: {' | '.join(EXPANSIONS.names())} (default: the preset's)."),
          sets: Optional[list[str]] = SetOpt, weights: Optional[str] = WeightsOpt,
          as_json: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Evaluate a preset on a benchmark and print its table (revisited: Easy/Medium/Hard mAP and mP@1,5,10)."""
    from .evaluation.evaluate import evaluate
    try:
        result = evaluate(dataset, preset, data=data, gnd=gnd, images=images, train=train, workdir=workdir,
                          overrides=_overrides(sets, weights), expansion=expansion, progress=_progress(quiet))
    except (PresetError, IndexError_, ImageLoadError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(result.table())
    typer.echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    if as_json:
        as_json.write_text(json.dumps({"dataset": result.dataset, "preset": result.preset.name, "expansion": result.expansion,
                                       "search": result.search, "trained_on": result.trained_on, "metrics": result.metrics},
                                      indent=1, default=float))


@app.command()
def presets():
    """List the built-in presets and what they are."""
    from .evaluation.evaluate import describe_search
    for name in builtin_names():
        p = load_preset(name)
        f, pool, w = p["features"], p["pooling"], p["whitening"]
        trunk = "RootSIFT (OpenCV)" if f["type"] == "rootsift" else f"{f['arch']} ({f['weights']}), scales {f['scales']}"
        if f.get("layer"):
            trunk += f", layer {f['layer']}"
        default = "  [default]" if name == DEFAULT_PRESET else ""
        regions = f"; regions: {p['regions']['method']}" if p["regions"]["method"] != "none" else ""
        region_pooling = (f"; region descriptors: {p['region_pooling']['method']}"
                          if p["region_pooling"]["method"] != "none" else "")
        typer.echo(f"{name}{default}\n    {p.description}\n    features: {trunk}{regions}; pooling: {pool['method']}; "
                   f"whitening: {w['method']}{region_pooling}\n    search: {describe_search(p)}\n    from: {p.reference}")


@app.command()
def download(name: str = typer.Argument(..., help="roxford5k, rparis6k, oxford5k, paris6k, holidays or ukbench."),
             dest: Path = typer.Option(Path("data"), "--dir", help="Where to put it."),
             mirror: Optional[str] = typer.Option(None, help="Fetch the same file names from this base URL instead (also INSTAR_DATA_MIRROR).")):
    """Download a benchmark from its official URLs and lay it out as `instar eval` reads it."""
    from .evaluation.download import download_dataset
    try:
        folder = download_dataset(name, dest, mirror=mirror)
    except (OSError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{name} is in {folder}; evaluate with: instar eval {name} --data {folder}")


@app.command()
def demo(out: Path = typer.Option(Path("demo"), "--out", help="Folder for the demo collection, index and HTML page."),
         preset: str = typer.Option(DEFAULT_PRESET, help="Preset to run."),
         quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Build the demo collection from scikit-image's photographs, index it, evaluate it and write an HTML page of hits."""
    from .tools.demo import EXPECTED_SKIPS, build_demo, query_positives
    from .evaluation.datasets import load_dataset
    from .evaluation.evaluate import evaluate
    from .search import search as run_search
    from .tools.report import write_hits_html
    collection = build_demo(out / "collection")
    ds = load_dataset("folder", data=collection)
    logging.getLogger("instar.index").setLevel(logging.ERROR)   # skipped files are listed below, expected or not
    result = evaluate(ds, preset, train=collection / "train", workdir=out, progress=_progress(quiet))
    typer.echo(result.table())
    q = ds.queries[0]
    with Index.open(result.index_path) as idx:
        hits = run_search(idx, q.image, box=q.box, k=12)
        for path, reason in idx.failures():   # the demo's featureless distractor is skipped on purpose
            note = EXPECTED_SKIPS.get(Path(path).name)
            typer.secho(f"  skipped {Path(path).name}: {note or reason}", fg=None if note else "yellow", err=True)
    positives = query_positives(collection, q.name)
    page = write_hits_html(out / "hits.html", q.image, q.box, hits, title=f"instar demo: query {q.name}", positives=positives)
    typer.echo(f"wrote {page} (query {q.name}, {sum(h.name in positives for h in hits)} of {len(positives)} positives in the top {len(hits)})")


@app.command()
def serve(index_dir: Path = typer.Argument(..., metavar="INDEX"),
          host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this machine only)."),
          port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
          token: Optional[str] = typer.Option(None, envvar="INSTAR_TOKEN", show_envvar=True,
                                              help="Bearer token required by POST /images and DELETE /images/{id}."),
          allow_folder: Optional[list[Path]] = typer.Option(None, "--allow-folder",
                                                            help="Let POST /images add server-side folders inside DIR (repeatable)."),
          allowed_host: Optional[list[str]] = typer.Option(None, "--allowed-host", help="Another Host name clients use to reach the server (repeatable; '*': any)."),
          max_upload_mb: float = typer.Option(32, help="Largest request body, in MiB."),
          max_k: int = typer.Option(1000, min=1, help="Most hits one search returns."),
          workers: Optional[int] = typer.Option(None, min=1, help="Search threads (default: one per core, at most 4)."),
          torch_threads: Optional[int] = typer.Option(None, min=1, help="Torch threads per forward (default: cores / workers)."),
          log_level: str = typer.Option("info", help="uvicorn's log level (warning: no access log).")):
    """Serve the index over HTTP: the search page at /, the API at /search, /images, /stats (docs at /docs)."""
    import uvicorn

    from .server.app import create_app
    if not max_upload_mb > 0:
        _fail(f"--max-upload-mb {max_upload_mb}: must be positive")
    try:
        with phase(f"opening {index_dir} and loading its preset's model", _say()):
            api = create_app(index_dir, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_k=max_k,
                             allow_folders=allow_folder or (), workers=workers, torch_threads=torch_threads, host=host,
                             allowed_hosts=allowed_host or ())
    except (IndexError_, PresetError, ValueError, OSError) as e:
        _fail(str(e))
    service = api.state.service
    typer.echo(f"serving {index_dir} ({len(service.index())} images, preset {service.extractor.preset.name}) on "
               f"http://{host}:{port}/ ; {service.workers} search threads x {service.torch_threads} torch threads; "
               f"changes {'need the bearer token' if service.token else 'are open to anyone who can connect'}",
               err=True)
    uvicorn.run(api, host=host, port=port, log_level=log_level)


@app.command("estimate-boxes")
def estimate_boxes(folder: Path = typer.Argument(..., metavar="DIR", help="One sub-folder per object, or (with --reference-folder) folders of views named by object id."),
                   out: Path = typer.Option(..., "--out", "-o", help="JSON file to write: {relative image path: {box, inliers}}."),
                   reference_folder: Optional[str] = typer.Option(None, "--reference-folder", help="Sub-folder of DIR holding one reference per object (e.g. Reference); views elsewhere are named like their reference (Canon/001.jpg)."),
                   mode: str = typer.Option("auto", help="frame (project the reference's whole frame: flat objects), inliers (box the verified keypoints), or auto: frame with --reference-folder, else inliers."),
                   min_inliers: int = typer.Option(15, help="Fewest RANSAC inliers that make a box."),
                   quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Estimate each image's object box by RootSIFT matching verified by a RANSAC homography, and write them as a
    ground-truth JSON file (boxes in the original images' pixels, null where matching failed)."""
    from .tools.matching import MatchingError, boxes_from_object_folders, boxes_from_references, write_boxes_json
    if mode not in ("auto", "frame", "inliers"):
        _fail(f"--mode {mode!r}: expected auto, frame or inliers")
    if min_inliers < 4:
        _fail(f"--min-inliers {min_inliers}: a homography needs at least 4")
    if mode == "frame" and reference_folder is None:
        _fail(f"{folder}: --mode frame projects a reference's frame: name the references with --reference-folder")
    if out.is_dir():
        _fail(f"{out}: is a folder; give the boxes file a name, e.g. boxes.json")
    problems: list[tuple[Path, str]] = []
    try:
        if reference_folder is not None:
            records = boxes_from_references(folder, reference_folder, mode="frame" if mode == "auto" else mode,
                                            min_inliers=min_inliers, progress=_progress(quiet), problems=problems)
        else:
            records = boxes_from_object_folders(folder, min_inliers=min_inliers, progress=_progress(quiet),
                                                problems=problems)
    except (MatchingError, FileNotFoundError) as e:
        _fail(str(e))
    _print_skipped(problems)
    if not records:
        _fail(f"{folder}: no image could be read")
    try:
        write_boxes_json(records, out)
    except OSError as e:
        _fail(f"{out}: cannot write the boxes file ({e.strerror or e})")
    estimated = [r for r in records.values() if not r.reference]
    found = sum(r.box is not None for r in estimated)
    refs = len(records) - len(estimated)
    typer.echo(f"{out}: boxes for {found} of {len(estimated)} images" + (f" (plus {refs} references, whole frame)" if refs else ""))


@app.command("train-proposals")
def train_proposals(folder: Path = typer.Argument(..., metavar="DIR", help="Images: one sub-folder per object (boxes estimated by matching within each), or the root the --boxes paths are relative to."),
                    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (.pth), usable as regions.weights of the rpn entry."),
                    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Boxes JSON (as estimate-boxes writes it) instead of matching."),
                    include: Optional[list[str]] = typer.Option(None, "--include", help="Train only on images whose relative path matches this glob (repeatable), e.g. '*/0[0-4]?.jpg'."),
                    epochs: int = typer.Option(30, "--epochs", help="Passes over the training images."),
                    arch: str = typer.Option("efficientnet-lite0", help="Trunk whose map the head learns on (frozen)."),
                    layer: str = typer.Option("stride32", help="The trunk's tap."),
                    weights: str = typer.Option("imagenet", "--weights", help="Trunk weights: imagenet, random:SEED or a .pth."),
                    max_size: int = typer.Option(1024, help="Images are shrunk to this longest side first, as the image stage does."),
                    hidden: int = typer.Option(128, help="Channels of the head's 3x3 conv."),
                    lr: float = typer.Option(1e-3, help="Adam learning rate."),
                    flip: bool = typer.Option(True, "--flip/--no-flip", help="Also train on horizontal flips."),
                    seed: int = typer.Option(0, help="Seed of the head's init and the anchor sampling."),
                    quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Train a region proposal network head (3x3 conv, objectness and box-regression 1x1 convs over 9 anchors per
    cell) on a frozen trunk's map, from boxes estimated by matching; prints the loss per epoch."""
    from .core.checkpoints import WeightsError
    from .tools.matching import MatchingError
    from .learning.rpn import TrainingError, collect_samples, save_checkpoint, train_rpn
    if epochs < 1:
        _fail(f"--epochs {epochs}: must be at least 1")
    if out.is_dir():
        _fail(f"{out}: is a folder; give the checkpoint a file name, e.g. rpn.pth")
    problems: list[tuple[Path, str]] = []
    try:
        samples = collect_samples(folder, boxes, include=include or (), progress=_progress(quiet), problems=problems)
        _print_skipped(problems)
        typer.echo(f"training on {len(samples)} images with boxes", err=True)
        unreadable: list[tuple[Path, str]] = []
        ckpt = train_rpn(samples, arch=arch, layer=layer, weights=weights, max_size=max_size, epochs=epochs,
                         hidden=hidden, lr=lr, flip=flip, seed=seed, progress=_progress(quiet),
                         log=lambda line: typer.echo(line), problems=unreadable)
        _print_skipped(unreadable)
    except (MatchingError, TrainingError, WeightsError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    try:
        save_checkpoint(ckpt, out)
    except OSError as e:
        _fail(f"{out}: cannot write the checkpoint ({e.strerror or e})")
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


@app.command("train")
def train(data: Path = typer.Argument(..., metavar="DATA", help="Training images: a folder with one sub-folder per object or landmark, a CSV of (image, object_id) rows, or (--unlabelled) any folder of photos."),
          out: Path = typer.Option(..., "--out", "-o", help="Model to write (.pth): the trunk's checkpoint plus its learned whitening; resumable state goes to OUT.state."),
          preset: str = typer.Option("rmac-lite0", help="R-MAC preset the network is (its trunk, regions, scales, image size)."),
          epochs: int = typer.Option(10, "--epochs", help="Epochs of --updates-per-epoch updates; raising it on a finished run continues it."),
          train_blocks: int = typer.Option(1, "--train-blocks", help="Last MBConv blocks (+ the head conv) that learn; 0 = the whitening layer only."),
          loss: str = typer.Option("triplet", help="triplet (Gordo et al. eq. 1) or contrastive (survey eq. 13)."),
          margin: Optional[float] = typer.Option(None, help="Loss margin (default: triplet 0.1, contrastive 0.5 on squared distances)."),
          lr: float = typer.Option(1e-3, help="SGD learning rate of the trunk's trained blocks."),
          whiten_lr: Optional[float] = typer.Option(None, "--whiten-lr", help="SGD learning rate of the \"PCA\" layer (default: --lr)."),
          momentum: float = typer.Option(0.9, help="SGD momentum."),
          weight_decay: float = typer.Option(5e-5, "--weight-decay", help="SGD weight decay."),
          batch: int = typer.Option(64, help="Tuples whose gradients one update accumulates."),
          mine_every: int = typer.Option(16, "--mine-every", help="Updates between two hard-example minings."),
          updates_per_epoch: int = typer.Option(16, "--updates-per-epoch", help="Updates per epoch."),
          pool: int = typer.Option(2000, help="Training images embedded per mining (a random subset when there are more)."),
          classes: Optional[list[str]] = typer.Option(None, "--classes", help="Train only on objects whose name matches this glob (repeatable), e.g. '0[0-4]?'."),
          unlabelled: bool = typer.Option(False, "--unlabelled", help="DATA has no labels: group its photos by RootSIFT + RANSAC verified matches (connected components; unmatched photos dropped)."),
          mine_k: int = typer.Option(20, "--mine-k", help="--unlabelled: verify each photo with its K nearest by the trunk's R-MAC (0: every pair)."),
          min_inliers: int = typer.Option(15, "--min-inliers", help="--unlabelled: RANSAC inliers that verify a pair."),
          max_partners: int = typer.Option(0, "--max-partners", help="--unlabelled: keypoints that are inliers with more than K other images (shared background, logos) stop counting; 0 = off. K >= the views an object has."),
          val: Optional[Path] = typer.Option(None, "--val", help="Validation images (folder of object sub-folders or CSV): all-vs-all mAP per epoch."),
          val_dataset: Optional[str] = typer.Option(None, "--val-dataset", help="Validation benchmark (as instar eval names it, e.g. smvs-dvd-covers-test): its mAP per epoch."),
          val_data: Optional[Path] = typer.Option(None, "--val-data", help="The --val-dataset folder."),
          cache: Optional[Path] = typer.Option(None, "--cache", help="Keep the frozen trunk's outputs in this file between runs."),
          sets: Optional[list[str]] = SetOpt, weights: Optional[str] = WeightsOpt,
          seed: int = typer.Option(0, help="Seed of the mining's sampling."),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Train an R-MAC network (trunk's last blocks + the "PCA" layer) with a ranking loss and hard-negative mining
    on your own photos; prints the loss and the mAP per epoch and writes a .pth usable wherever --weights is."""
    from .evaluation.datasets import DatasetError
    from .core.checkpoints import WeightsError
    from .learning.command import state_path_of, train_command
    from .learning.rmac_net import LearningError
    from .learning.train import TrainConfig
    from .tools.matching import MatchingError
    if val_data is not None and val_dataset is None:
        _fail("--val-data names the folder of a --val-dataset; give the dataset's name too")
    try:
        p = load_preset(preset).with_overrides(_overrides(sets, weights))
        config = TrainConfig(train_blocks=train_blocks, loss=loss, margin=margin, epochs=epochs, lr=lr,
                             whiten_lr=whiten_lr, momentum=momentum, weight_decay=weight_decay, batch=batch, mine_every=mine_every,
                             updates_per_epoch=updates_per_epoch, pool=pool, seed=seed)
        outcome = train_command(data, p, out, config, classes=classes or (), unlabelled=unlabelled, mine_k=mine_k,
                                min_inliers=min_inliers, max_partners=max_partners, val=val, val_dataset=val_dataset, val_data=val_data,
                                cache=cache, progress=_progress(quiet), echo=lambda line: typer.echo(line))
    except (PresetError, LearningError, WeightsError, DatasetError, MatchingError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail(f"{out}: interrupted; {state_path_of(out)} keeps the last update: run the same command again to resume",
              code=130)
    _print_skipped(outcome.problems)


@app.command("train-cs-sr")
def train_cs_sr(dataset: str = typer.Argument(..., help="Benchmark whose query boxes are the objects to learn (as instar eval names it), e.g. mini-rparis6k."),
                out: Path = typer.Option(..., "--out", "-o", help="Classifier checkpoint to write (.pth), the cs-sr re-ranker's rerank.weights (strategy 2: also the trunk's --weights)."),
                data: Optional[Path] = typer.Option(None, help="Dataset folder (published layout)."),
                gnd: Optional[Path] = typer.Option(None, help="Revisited ground-truth pickle, if not in --data."),
                images: Optional[Path] = typer.Option(None, help="Image folder, if not in --data."),
                preset: str = typer.Option("ipa-sum-lite0", help="Preset of the index it will re-rank (trunk, image size; region_pooling.method must be max)."),
                strategy: int = typer.Option(1, help="1: the classifier only (trunk frozen); 2: the classifier and the trunk's last stage."),
                train_blocks: int = typer.Option(1, "--train-blocks", help="Strategy 2: last MBConv blocks (+ head conv) that learn."),
                steps: int = typer.Option(1000, help="SGD steps of 2 images x 64 RoIs."),
                lr: float = typer.Option(1e-3, help="Adam learning rate of the classifier (the trunk's stage: a tenth of it)."),
                hidden: int = typer.Option(256, help="Width of the classifier's hidden layer."),
                seed: int = typer.Option(0),
                sets: Optional[list[str]] = SetOpt, weights: Optional[str] = WeightsOpt,
                quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Fine-tune CS-SR's classifier (Salvador et al. sec. 3.2) on a benchmark's query boxes and their flips, one class
    per query object plus background; re-rank with --set rerank.method=cs-sr --set rerank.weights=OUT."""
    from .evaluation.datasets import DatasetError, load_dataset
    from .core.checkpoints import WeightsError
    from .learning.cssr import checkpoint_summary, train_cssr
    from .learning.rmac_net import LearningError
    from .learning.train import save_model
    if out.is_dir():
        _fail(f"{out}: is a folder; give the classifier a file name, e.g. cssr.pth")
    try:
        p = load_preset(preset).with_overrides(_overrides(sets, weights))
        ds = load_dataset(dataset, data=data, gnd=gnd, images=images)
        ckpt = train_cssr(ds, p, strategy=strategy, train_blocks=train_blocks, steps=steps, lr=lr, hidden=hidden,
                          seed=seed, progress=_progress(quiet), echo=lambda line: typer.echo(line))
    except (PresetError, LearningError, WeightsError, DatasetError, ImageLoadError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    try:
        save_model(ckpt, out)
    except OSError as e:
        _fail(f"{out}: cannot write the classifier ({e.strerror or e})")
    use = f"--set rerank.method=cs-sr --set rerank.weights={out}"
    if strategy == 2:
        use = f"--weights {out} " + use
    typer.echo(f"wrote {out}: {checkpoint_summary(ckpt)}; re-rank with: {use}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
