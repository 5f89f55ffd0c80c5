"""The commands that learn from photos: box estimation, RPN heads, R-MAC training, CS-SR."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..extract.images import ImageLoadError
from ..presets import load_preset, PresetError
from .common import app, fail, overrides, print_skipped, progress_bar, SetOpt, WeightsOpt


@app.command("estimate-boxes")
def estimate_boxes(folder: Path = typer.Argument(..., metavar="DIR", help="One sub-folder per object, or (with --reference-folder) folders of views named by object id."),
                   out: Path = typer.Option(..., "--out", "-o", help="JSON file to write: {relative image path: {box, inliers}}."),
                   reference_folder: Optional[str] = typer.Option(None, "--reference-folder", help="Sub-folder of DIR holding one reference per object (e.g. Reference); views elsewhere are named like their reference (Canon/001.jpg)."),
                   mode: str = typer.Option("auto", help="frame (project the reference's whole frame: flat objects), inliers (box the verified keypoints), or auto: frame with --reference-folder, else inliers."),
                   min_inliers: int = typer.Option(15, help="Fewest RANSAC inliers that make a box."),
                   quiet: bool = typer.Option(False, "--quiet", "-q")):
    """Estimate each image's object box by RootSIFT matching verified by a RANSAC homography, and write them as a
    ground-truth JSON file (boxes in the original images' pixels, null where matching failed)."""
    from ..tools.matching import MatchingError, boxes_from_object_folders, boxes_from_references, write_boxes_json
    if mode not in ("auto", "frame", "inliers"):
        fail(f"--mode {mode!r}: expected auto, frame or inliers")
    if min_inliers < 4:
        fail(f"--min-inliers {min_inliers}: a homography needs at least 4")
    if mode == "frame" and reference_folder is None:
        fail(f"{folder}: --mode frame projects a reference's frame: name the references with --reference-folder")
    if out.is_dir():
        fail(f"{out}: is a folder; give the boxes file a name, e.g. boxes.json")
    problems: list[tuple[Path, str]] = []
    try:
        if reference_folder is not None:
            records = boxes_from_references(folder, reference_folder, mode="frame" if mode == "auto" else mode,
                                            min_inliers=min_inliers, progress=progress_bar(quiet), problems=problems)
        else:
            records = boxes_from_object_folders(folder, min_inliers=min_inliers, progress=progress_bar(quiet),
                                                problems=problems)
    except (MatchingError, FileNotFoundError) as e:
        fail(str(e))
    print_skipped(problems)
    if not records:
        fail(f"{folder}: no image could be read")
    try:
        write_boxes_json(records, out)
    except OSError as e:
        fail(f"{out}: cannot write the boxes file ({e.strerror or e})")
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
    from ..core.checkpoints import WeightsError
    from ..tools.matching import MatchingError
    from ..learning.rpn import TrainingError, collect_samples, save_checkpoint, train_rpn
    if epochs < 1:
        fail(f"--epochs {epochs}: must be at least 1")
    if out.is_dir():
        fail(f"{out}: is a folder; give the checkpoint a file name, e.g. rpn.pth")
    problems: list[tuple[Path, str]] = []
    try:
        samples = collect_samples(folder, boxes, include=include or (), progress=progress_bar(quiet), problems=problems)
        print_skipped(problems)
        typer.echo(f"training on {len(samples)} images with boxes", err=True)
        unreadable: list[tuple[Path, str]] = []
        ckpt = train_rpn(samples, arch=arch, layer=layer, weights=weights, max_size=max_size, epochs=epochs,
                         hidden=hidden, lr=lr, flip=flip, seed=seed, progress=progress_bar(quiet),
                         log=lambda line: typer.echo(line), problems=unreadable)
        print_skipped(unreadable)
    except (MatchingError, TrainingError, WeightsError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        save_checkpoint(ckpt, out)
    except OSError as e:
        fail(f"{out}: cannot write the checkpoint ({e.strerror or e})")
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
    from ..evaluation.datasets import DatasetError
    from ..core.checkpoints import WeightsError
    from ..learning.command import state_path_of, train_command
    from ..learning.rmac_net import LearningError
    from ..learning.train import TrainConfig
    from ..tools.matching import MatchingError
    if val_data is not None and val_dataset is None:
        fail("--val-data names the folder of a --val-dataset; give the dataset's name too")
    try:
        p = load_preset(preset).with_overrides(overrides(sets, weights))
        config = TrainConfig(train_blocks=train_blocks, loss=loss, margin=margin, epochs=epochs, lr=lr,
                             whiten_lr=whiten_lr, momentum=momentum, weight_decay=weight_decay, batch=batch, mine_every=mine_every,
                             updates_per_epoch=updates_per_epoch, pool=pool, seed=seed)
        outcome = train_command(data, p, out, config, classes=classes or (), unlabelled=unlabelled, mine_k=mine_k,
                                min_inliers=min_inliers, max_partners=max_partners, val=val, val_dataset=val_dataset, val_data=val_data,
                                cache=cache, progress=progress_bar(quiet), echo=lambda line: typer.echo(line))
    except (PresetError, LearningError, WeightsError, DatasetError, MatchingError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail(f"{out}: interrupted; {state_path_of(out)} keeps the last update: run the same command again to resume",
              code=130)
    print_skipped(outcome.problems)


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
    from ..evaluation.datasets import DatasetError, load_dataset
    from ..core.checkpoints import WeightsError
    from ..learning.cssr import checkpoint_summary, train_cssr
    from ..learning.rmac_net import LearningError
    from ..learning.train import save_model
    if out.is_dir():
        fail(f"{out}: is a folder; give the classifier a file name, e.g. cssr.pth")
    try:
        p = load_preset(preset).with_overrides(overrides(sets, weights))
        ds = load_dataset(dataset, data=data, gnd=gnd, images=images)
        ckpt = train_cssr(ds, p, strategy=strategy, train_blocks=train_blocks, steps=steps, lr=lr, hidden=hidden,
                          seed=seed, progress=progress_bar(quiet), echo=lambda line: typer.echo(line))
    except (PresetError, LearningError, WeightsError, DatasetError, ImageLoadError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        save_model(ckpt, out)
    except OSError as e:
        fail(f"{out}: cannot write the classifier ({e.strerror or e})")
    use = f"--set rerank.method=cs-sr --set rerank.weights={out}"
    if strategy == 2:
        use = f"--weights {out} " + use
    typer.echo(f"wrote {out}: {checkpoint_summary(ckpt)}; re-rank with: {use}")
