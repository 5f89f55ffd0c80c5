"""The commands that build, search and serve an index, and evaluate presets."""
from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import Optional

import typer

from ..core.progress import phase
from ..core.registry import EXPANSIONS, SEARCH_SECTIONS
from ..distributed.jobs import add_images, check_runtime
from ..extract.images import ImageLoadError, list_images
from ..index import Index, IndexError_
from ..index.shards import MAX_SHARDS, SUFFIX, create_shards, is_manifest
from ..search.sharded import ShardedIndex
from ..presets import builtin_names, DEFAULT_PRESET, load_preset, PresetError
from .common import app, fail, overrides, parse_query_box, print_skipped, progress_bar, say, SetOpt, WeightsOpt


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
          shards: Optional[int] = typer.Option(None, "--shards", metavar="N", help=f"Write N shards (one fitted model) and a manifest at --out (NAME{SUFFIX}); each image goes to the shard owning its name."),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Index a folder of photos; re-running resumes an interrupted run, adds new or changed files, and checks the
    stored rows (damaged ones are described again)."""
    if batch_size < 1:
        fail(f"--batch-size {batch_size}: must be at least 1")
    sharded = shards is not None or is_manifest(out) or (not out.exists() and out.name.endswith(".json"))
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        fail(f"--shards {shards}: the number of shards must be from 1 to {MAX_SHARDS}")
    if sharded and not out.name.endswith(".json"):
        fail(f"{out}: with --shards, --out names the shard manifest to write, a .json file (e.g. photos{SUFFIX})")
    if sharded and out.exists() and not is_manifest(out):
        fail(f"{out}: is a folder, not a shard manifest; choose another --out")
    if sharded and shards is None and not out.exists():
        fail(f"{out}: a .json --out is a shard manifest: give --shards N to create one (or name an index folder)")
    try:
        check_runtime(device, ray)
        problems: list[tuple[Path, str]] = []
        paths = list_images(photos, problems=problems)
        print_skipped(problems)
        if not paths:
            fail(f"{photos}: no image files found")
        if out.exists():
            idx = ShardedIndex.open(out) if sharded else Index.open(out)
            if shards is not None and len(idx.shards) != shards:
                idx.close()
                fail(f"{out}: holds {len(idx.shards)} shards, not --shards {shards}; omit --shards to add to it, or "
                     "choose another --out")
            asked = (load_preset(preset) if preset is not None else idx.preset).with_overrides(overrides(sets, weights))
            differ = idx.preset.stored_differences(asked)
            if differ or asked.extraction_toml() != idx.preset.extraction_toml():
                idx.close()
                fail(f"{out}: was built with another preset configuration ({idx.preset.name}): "
                      f"{'; '.join(differ) or f'preset {asked.name!r}'}; omit --preset/--set to add to it, or choose "
                      "another --out")
            searching = [s for s in overrides(sets, None) if s.partition(".")[0] in SEARCH_SECTIONS]
            if searching:
                typer.echo(f"note: {', '.join(searching)}: search-time settings are not stored in the index; give them "
                           "to instar search --set", err=True)
            damaged = [(part, rec, why) for part in parts_of(idx) for rec, why in part.verify()]
            typer.echo(f"resuming {out}: {len(idx)} images already indexed{in_shards(idx)}; checked their stored "
                       f"rows: {len(damaged)} damaged", err=True)
        else:
            p = load_preset(preset or DEFAULT_PRESET).with_overrides(overrides(sets, weights))
            train_paths = list_images(train) if train else paths
            trained_on = str(train) if train else f"the indexed collection {photos}"
            with phase(f"learning preset {p.name}'s model on {len(train_paths)} training images", say(quiet or not p.needs_training)):
                if sharded:  # the model fitted once, copied into every shard
                    create_shards(out, p, train_paths, shards, trained_on=trained_on, progress=progress_bar(quiet))
                    idx = ShardedIndex.open(out)
                else:
                    idx = Index.create(out, p, train_paths, trained_on=trained_on, progress=progress_bar(quiet))
            damaged = []
        # the summary below lists every skipped file with its reason; the library's per-file log lines would repeat it
        logging.getLogger("instar.index").setLevel(logging.ERROR)
        with idx:
            for part in parts_of(idx):
                mine = [rec for owner, rec, _ in damaged if owner is part]
                for owner, rec, reason in damaged:
                    if owner is part:
                        typer.secho(f"  damaged {rec.name}: {reason}; describing it again", fg="yellow", err=True)
                if mine:
                    fixed = part.reextract(mine, batch_size=batch_size, progress=progress_bar(quiet))
                    typer.echo(f"re-extracted {fixed.added + fixed.updated} of {len(mine)} damaged rows", err=True)
                    print_skipped(fixed.failed)
                if prune:
                    gone = part.prune()
                    typer.echo(f"pruned {len(gone)} images whose files are gone{'' if part is idx else ' from ' + str(part.path)}", err=True)
            report = add_images(idx, paths, root=photos, ray=ray, workers=workers, batch_size=batch_size, device=device, progress=progress_bar(quiet))
            typer.echo(f"{out}: {len(idx)} images (added {report.added}, updated {report.updated}, "
                       f"unchanged {report.unchanged}, unreadable {len(report.failed) + len(problems)}), "
                       f"preset {idx.preset.name}, dim {idx.dim}{in_shards(idx)}")
            print_skipped(report.failed)
    except (PresetError, IndexError_, FileNotFoundError, ValueError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"{out}: interrupted; what was committed is kept, run the same command again to resume", code=130)


def parts_of(idx) -> list[Index]:
    """The ordinary indexes behind `idx`: its shards, or itself."""
    return idx.shards if isinstance(idx, ShardedIndex) else [idx]


def in_shards(idx) -> str:
    return f" in {len(idx.shards)} shards" if isinstance(idx, ShardedIndex) else ""


@app.command()
def search(index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index, or a shard manifest (.json)."), query: Path = typer.Argument(...),
           box: Optional[str] = typer.Option(None, help="Query box x0,y0,x1,y1 in the query image's pixels."),
           k: int = typer.Option(20, "-k", help="Number of hits (at least 1)."),
           expansion: Optional[str] = typer.Option(None, help=f"Query expansion: {' | '.join(EXPANSIONS.names())} (default: the preset's)."),
           sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a search-time value (search, filter, rerank, expansion), e.g. rerank.top=50."),
           html: Optional[Path] = typer.Option(None, help="Write an HTML page of the hits here."),
           as_json: bool = typer.Option(False, "--json", help="Print hits as JSON (with each hit's box, original pixels).")):
    """Search an index with a query image, or a box drawn on it."""
    from ..search import open_index, search as run_search
    from ..tools.report import page_target_problem, write_hits_html
    if k < 1:
        fail(f"-k {k}: the number of hits must be at least 1")
    if expansion is not None and expansion not in EXPANSIONS:
        fail(f"--expansion {expansion!r}: expected one of {', '.join(EXPANSIONS.names())}")
    query_box = parse_query_box(box, query)
    if html is not None:
        problem = page_target_problem(html)
        if problem:
            fail(f"{html}: {problem}")
    try:
        with phase(f"opening {index_dir} (its preset's model) and ranking it for {query.name}", say()), open_index(index_dir) as idx:
            hits = run_search(idx, query, box=query_box, k=k, expansion=expansion, overrides=overrides(sets, None))
    except (IndexError_, ImageLoadError, PresetError) as e:
        fail(str(e))
    except ValueError as e:
        fail(f"{query}: {e}")
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
            fail(f"{html}: cannot write the page ({e.strerror or e})")
        typer.echo(f"wrote {html}", err=True)


@app.command()
def remove(index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index, or a shard manifest (.json)."),
           names: list[str] = typer.Argument(..., metavar="NAME_OR_PATH...", help="Stored names (as search prints them) or file paths.")):
    """Remove images from an index. Their stored rows become tombstones; search never returns them again."""
    from ..search import open_index
    try:
        with open_index(index_dir) as idx:
            removed = idx.remove(names)
            left = len(idx)
    except IndexError_ as e:
        fail(str(e))
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
          shards: Optional[int] = typer.Option(None, "--shards", metavar="N", help="Build the evaluated index as N shards of one model and search them as one (the metrics equal one index's)."),
          quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Evaluate a preset on a benchmark and print its table (revisited: Easy/Medium/Hard mAP and mP@1,5,10)."""
    from ..evaluation.evaluate import evaluate
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        fail(f"--shards {shards}: the number of shards must be from 1 to {MAX_SHARDS}")
    try:
        result = evaluate(dataset, preset, data=data, gnd=gnd, images=images, train=train, workdir=workdir,
                          overrides=overrides(sets, weights), expansion=expansion, shards=shards,
                          progress=progress_bar(quiet))
    except (PresetError, IndexError_, ImageLoadError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    typer.echo(result.table())
    typer.echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    if as_json:
        as_json.write_text(json.dumps({"dataset": result.dataset, "preset": result.preset.name, "expansion": result.expansion,
                                       "search": result.search, "trained_on": result.trained_on, "metrics": result.metrics},
                                      indent=1, default=float))


@app.command()
def presets():
    """List the built-in presets and what they are."""
    from ..evaluation.evaluate import describe_search
    for name in builtin_names():
        p = load_preset(name)
        f, pool, w = p["features"], p["pooling"], p["whitening"]
        trunk = ("RootSIFT (OpenCV)" if f["type"] == "rootsift"
                 else f"ONNX {f['model']} ({f['layout']} {f['dtype']}, resize {f['resize']} {f['size']})" if f["type"] == "onnx"
                 else f"fusion of {f['parts']} (weights {f['weights']})" if f["type"] == "fusion"
                 else f"{f['arch']} ({f['weights']}), scales {f['scales']}")
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
    from ..evaluation.download import download_dataset
    try:
        folder = download_dataset(name, dest, mirror=mirror)
    except (OSError, ValueError) as e:
        fail(str(e))
    typer.echo(f"{name} is in {folder}; evaluate with: instar eval {name} --data {folder}")


@app.command()
def demo(out: Path = typer.Option(Path("demo"), "--out", help="Folder for the demo collection, index and HTML page."),
         preset: str = typer.Option(DEFAULT_PRESET, help="Preset to run."),
         quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Build the demo collection from scikit-image's photographs, index it, evaluate it and write an HTML page of hits."""
    from ..tools.demo import EXPECTED_SKIPS, build_demo, query_positives
    from ..evaluation.datasets import load_dataset
    from ..evaluation.evaluate import evaluate
    from ..search import search as run_search
    from ..tools.report import write_hits_html
    collection = build_demo(out / "collection")
    ds = load_dataset("folder", data=collection)
    logging.getLogger("instar.index").setLevel(logging.ERROR)   # skipped files are listed below, expected or not
    result = evaluate(ds, preset, train=collection / "train", workdir=out, progress=progress_bar(quiet))
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
def serve(index_dir: Path = typer.Argument(..., metavar="INDEX", help="An index, or a shard manifest (.json): adds go to the shard owning each image."),
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

    from ..server.app import create_app
    if not max_upload_mb > 0:
        fail(f"--max-upload-mb {max_upload_mb}: must be positive")
    try:
        with phase(f"opening {index_dir} and loading its preset's model", say()):
            api = create_app(index_dir, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_k=max_k,
                             allow_folders=allow_folder or (), workers=workers, torch_threads=torch_threads, host=host,
                             allowed_hosts=allowed_host or ())
    except (IndexError_, PresetError, ValueError, OSError) as e:
        fail(str(e))
    service = api.state.service
    typer.echo(f"serving {index_dir} ({len(service.index())} images, preset {service.extractor.preset.name}) on "
               f"http://{host}:{port}/ ; {service.workers} search threads x {service.torch_threads} torch threads; "
               f"changes {'need the bearer token' if service.token else 'are open to anyone who can connect'}",
               err=True)
    uvicorn.run(api, host=host, port=port, log_level=log_level)
