"""Training an R-MAC network (`rmac_net.RMACNet`) with a ranking loss and hard-example mining, on CPU.

Recipe (Gordo et al. sec. 5.1, `TrainConfig` defaults): every `mine_every` = 16 updates, embed a pool of training
images (at most `pool`, all of ours) with the current network, compute the loss of every tuple of the pool and
sample the next 16 x 64 tuples by loss (`losses`); each update accumulates the gradients of `batch` = 64 tuples
and takes one SGD step (lr 1e-3, momentum 0.9, weight decay 5e-5). An epoch is `updates_per_epoch` = 16 updates
(one mining round). After every epoch: the training set's all-vs-all mAP, the validation mAP when a validation
set is given, the mean update loss and the pool's loss, printed and kept in the history.

The gradient of 64 tuples is accumulated without holding 64 x 3 graphs: the tuples' distinct images are embedded
once without gradients, the loss's gradient with respect to those descriptors is taken, and the images are then
embedded again with gradients, `GRAD_CHUNK` at a time, and back-propagated with their descriptors' gradients. That
is the exact gradient of the mean tuple loss (the network has no batch statistics or dropout), in the memory of
one chunk.

Resuming (`state_path`): after every update the trained parameters, the optimiser's state (momentum), the step,
the current mining round's tuples, the history and the random generator's state are written atomically; a run
started again with the same configuration goes on from there and ends with the same weights as a run that was
never interrupted. The number of epochs is not part of the configuration, so raising it continues training.

Caching: the frozen part of the trunk runs once per image (`rmac_net.cached_view`); `cache_path` keeps those
outputs on disk between runs (recomputed when the extraction configuration or an image changes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.progress import Progress, no_progress
from ..extract.extractor import Extractor
from ..extract.images import ImageLoadError
from ..presets import Preset
from .losses import Mined, all_vs_all_map, make_loss
from .rmac_net import CachedView, LearningError, RMACNet, cached_view, check_preset, split_trunk

log = logging.getLogger(__name__)

STATE_FORMAT = "instar-train-state/1"
GRAD_CHUNK = 32  # images whose trained-part activations one backward pass holds
CACHE_FORMAT = "instar-train-cache/1"



@dataclass
class TrainConfig:
    """What training does; every value but `epochs` must match for a run to resume another's checkpoint."""
    train_blocks: int = 1
    loss: str = "triplet"
    margin: float | None = None  # None: the loss's own default (triplet 0.1, contrastive 0.5)
    epochs: int = 10
    lr: float = 1e-3
    whiten_lr: float | None = None  # the "PCA" layer's learning rate (None: lr)
    momentum: float = 0.9
    weight_decay: float = 5e-5
    batch: int = 64
    mine_every: int = 16
    updates_per_epoch: int = 16
    pool: int = 2000
    seed: int = 0

    def check(self) -> None:
        for name in ("batch", "mine_every", "updates_per_epoch", "pool"):
            if getattr(self, name) < 1:
                raise LearningError(f"{name} {getattr(self, name)}: must be at least 1")
        if self.epochs < 0:
            raise LearningError(f"epochs {self.epochs}: must be 0 or more")
        if not self.lr > 0 or not (self.whiten_lr is None or self.whiten_lr > 0):
            raise LearningError(f"learning rates must be positive (lr {self.lr}, whiten_lr {self.whiten_lr})")
        make_loss(self.loss, self.margin)

    def key(self) -> dict:
        out = asdict(self)
        out.pop("epochs")
        return out


@dataclass
class Item:
    """One image to describe: its file and, for a cropped query, the box (original pixels)."""
    path: Path
    box: tuple[float, float, float, float] | None = None

    def cache_key(self) -> str:
        st = self.path.stat()
        return f"{self.path.resolve()}|{self.box}|{st.st_size}|{st.st_mtime_ns}"


# ----------------------------------------------------------------------------- validation


class LabelledValidation:
    """All-vs-all mAP over labelled images (each a query, the other images of its object the positives)."""

    def __init__(self, items: Sequence[Item], labels: Sequence[str], name: str):
        self.items, self.labels, self.name = list(items), np.asarray(labels), name
        self.views: list[CachedView] = []

    def score(self, E: np.ndarray) -> float:
        return all_vs_all_map(E, self.labels)


class DatasetValidation:
    """A benchmark's own protocol (`instar.evaluation` datasets): its queries (cropped to their boxes) ranked
    against its database; mAP of protocol `all` (Medium for the revisited datasets)."""

    def __init__(self, dataset):
        self.dataset, self.name = dataset, dataset.name
        self.items = [Item(Path(p)) for p in dataset.database] + [Item(Path(q.image), q.box) for q in dataset.queries]
        self.views: list[CachedView] = []

    def score(self, E: np.ndarray) -> float:
        n = len(self.dataset.database)
        ranks = np.argsort(-(E[n:] @ E[:n].T), axis=1, kind="stable")
        metrics = self.dataset.evaluate(ranks).metrics
        return float((metrics.get("all") or metrics["medium"])["map"])


# ----------------------------------------------------------------------------- the trainer


@dataclass
class TrainResult:
    """The trained network, the per-epoch history (epoch 0: before training) and the training time."""
    net: RMACNet
    history: list[dict]
    steps: int
    resumed_from: int | None = None
    seconds: float = 0.0


@dataclass
class Trainer:
    """Builds the preset's extractor and network, caches the frozen trunk's outputs, and trains."""
    preset: Preset
    config: TrainConfig = field(default_factory=TrainConfig)
    progress: Progress = no_progress
    echo: Callable[[str], None] = print
    cache_path: Path | None = None

    def __post_init__(self):
        self.config.check()
        check_preset(self.preset)
        self.extractor = Extractor(self.preset)
        self.split = split_trunk(self.extractor.model, self.preset["features"]["arch"], self.config.train_blocks)
        self.loss = make_loss(self.config.loss, self.config.margin)
        self._cache: dict[str, dict] | None = None
        self._cache_dirty = False

    # --- caching ------------------------------------------------------------------------------
    def _cache_key(self) -> str:
        return json.dumps({"format": CACHE_FORMAT, "preset": self.preset.extraction_toml(),
                           "train_blocks": self.config.train_blocks}, sort_keys=True)

    def _load_cache(self) -> dict[str, dict]:
        if self._cache is None:
            self._cache = {}
            if self.cache_path is not None and self.cache_path.is_file():
                try:
                    obj = torch.load(self.cache_path, map_location="cpu", weights_only=True)
                except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
                    self.echo(f"cache {self.cache_path} is unreadable ({type(e).__name__}); computing it again")
                    obj = None
                if isinstance(obj, dict) and obj.get("key") == self._cache_key():
                    self._cache = dict(obj["items"])
                elif obj is not None:
                    self.echo(f"cache {self.cache_path} is for another configuration; computing it again")
        return self._cache

    def save_cache(self) -> None:
        if self.cache_path is None or not self._cache_dirty:
            return
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        torch.save({"key": self._cache_key(), "items": self._cache}, tmp)
        os.replace(tmp, self.cache_path)
        self._cache_dirty = False

    def views(self, items: Sequence[Item], what: str, problems: list[tuple[Path, str]] | None = None
              ) -> tuple[list[CachedView], list[int]]:
        """Cached views of `items` and the indices of those that could be read (others go to `problems`)."""
        cache = self._load_cache()
        out, ok = [], []
        for i, item in enumerate(self.progress(items, desc=what)):
            try:
                key = item.cache_key()
            except OSError as e:
                if problems is None:
                    raise LearningError(f"{item.path}: cannot read it ({e.strerror or e})") from None
                problems.append((item.path, e.strerror or str(e)))
                continue
            if key not in cache:
                try:
                    image = self.extractor.load(item.path, item.box)
                except ImageLoadError as e:
                    if problems is None:
                        raise LearningError(str(e)) from None
                    problems.append((item.path, e.reason))
                    continue
                cache[key] = cached_view(self.extractor, self.split, image).to_state()
                self._cache_dirty = True
            out.append(CachedView.from_state(cache[key]))
            ok.append(i)
        self.save_cache()
        return out, ok

    # --- the network --------------------------------------------------------------------------
    def network(self, train_views: Sequence[CachedView]) -> RMACNet:
        """The network, its "PCA" layer from the preset's whitening: fitted now on the training images' region
        vectors when it is learned (as `whitening.fit_extractor` would fit it), or read from the weights."""
        whitening = self.extractor.whitening
        if getattr(whitening, "learns", False) and not whitening.fitted:
            X = np.concatenate([r.numpy() for v in train_views for r in v.regions])
            whitening.fit(X, np.random.default_rng(self.config.seed))
        return RMACNet.from_extractor(self.extractor, self.split)

    # --- training -----------------------------------------------------------------------------
    def train(self, views: Sequence[CachedView], labels: Sequence[str], *, data_key: str = "",
              validation: LabelledValidation | DatasetValidation | None = None, state_path: Path | None = None,
              on_update: Callable[[int], None] | None = None) -> TrainResult:
        """Train on `views` of objects `labels`; `on_update(step)` is called after each update is saved.
        `data_key` names the training data in the checkpoint's configuration (e.g. a hash of the files), so a
        checkpoint of other data is refused."""
        cfg = self.config
        views = list(views)
        names = sorted(set(labels))
        y = np.array([names.index(c) for c in labels])
        net = self.network(views)
        groups = [{"params": list(net.whiten.parameters()), "lr": cfg.lr if cfg.whiten_lr is None else cfg.whiten_lr}]
        if self.split.trains:
            groups.append({"params": self.split.parameters(), "lr": cfg.lr})
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        data_key = hashlib.sha1("\n".join([data_key, *labels, *(str(tuple(r.shape)) for v in views for r in v.regions)])
                                .encode()).hexdigest()
        config_key = {**cfg.key(), "preset": self.preset.extraction_toml(), "data": data_key}
        st = {"epoch": 0, "update": 0, "steps": 0, "round_id": -1, "round": None, "round_stats": None,
              "history": [], "update_losses": [], "seconds": 0.0}
        resumed = None
        if state_path is not None and state_path.is_file():
            st = self._restore(state_path, config_key, net, opt, rng, st)
            resumed = st["steps"]
            self.echo(f"resuming {state_path}: epoch {st['epoch'] + 1}, update {st['steps']}")
        fresh: tuple[int, np.ndarray] | None = None  # (steps, embeddings of every training view)

        def evaluate(epoch: int, extra: dict) -> dict:
            nonlocal fresh
            t0 = time.perf_counter()
            E = net.embed_all(views).numpy()
            fresh = (st["steps"], E)
            row = {"epoch": epoch, "steps": st["steps"], "train_map": all_vs_all_map(E, y), **extra}
            if validation is not None:
                row["val_map"] = validation.score(net.embed_all(validation.views).numpy())
                row["val"] = validation.name
            row["eval_seconds"] = time.perf_counter() - t0
            return row

        if not st["history"]:
            row = evaluate(0, {"loss": None, "pool_loss": None})
            st["history"].append(row)
            self.echo(self._line(row, cfg.epochs))
            self._save(state_path, config_key, net, opt, rng, st)

        t_start = time.perf_counter()
        while st["epoch"] < cfg.epochs:
            t_epoch = time.perf_counter()
            bar = self.progress(range(st["update"], cfg.updates_per_epoch), desc=f"epoch {st['epoch'] + 1} updates")
            for _ in bar:
                round_id = st["steps"] // cfg.mine_every
                if st["round_id"] != round_id:
                    mined = self._mine(net, views, y, rng, fresh if fresh and fresh[0] == st["steps"] else None)
                    st["round"], st["round_id"] = mined.tuples, round_id
                    st["round_stats"] = {"considered": mined.considered, "active": mined.active,
                                         "pool_loss": mined.mean_loss}
                at = (st["steps"] % cfg.mine_every) * cfg.batch
                st["update_losses"].append(self._update(net, opt, views, st["round"][at:at + cfg.batch]))
                st["steps"] += 1
                st["update"] += 1
                st["seconds"] += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                self._save(state_path, config_key, net, opt, rng, st)
                if on_update is not None:
                    on_update(st["steps"])
            losses = st["update_losses"]
            row = evaluate(st["epoch"] + 1, {"loss": float(np.mean(losses)) if losses else 0.0,
                                             **(st["round_stats"] or {})})
            st["seconds"] += time.perf_counter() - t_epoch
            row["seconds"] = st["seconds"]
            st["history"].append(row)
            st["epoch"] += 1
            st["update"], st["update_losses"], st["seconds"] = 0, [], 0.0
            self.echo(self._line(row, cfg.epochs))
            self._save(state_path, config_key, net, opt, rng, st)
        return TrainResult(net, st["history"], st["steps"], resumed, time.perf_counter() - t_start)

    def _mine(self, net: RMACNet, views, y: np.ndarray, rng: np.random.Generator,
              fresh: tuple[int, np.ndarray] | None) -> Mined:
        cfg = self.config
        n = len(views)
        pool = np.arange(n) if n <= cfg.pool else np.sort(rng.choice(n, cfg.pool, replace=False))
        E = fresh[1][pool] if fresh is not None else net.embed_all([views[i] for i in pool]).numpy()
        mined = self.loss.mine(E, y[pool], cfg.mine_every * cfg.batch, rng)
        tuples = mined.tuples.copy()
        k = 3 if self.loss.name == "triplet" else 2  # columns holding image indices
        tuples[:, :k] = pool[tuples[:, :k]]
        return Mined(tuples, mined.considered, mined.active, mined.mean_loss)

    def _update(self, net: RMACNet, opt: torch.optim.Optimizer, views, tuples: np.ndarray) -> float:
        """One SGD step on the mean loss of `tuples` (the exact accumulated gradient; see the module docstring)."""
        if len(tuples) == 0:
            return 0.0  # nothing in the pool has a loss: nothing to learn from
        k = 3 if self.loss.name == "triplet" else 2
        uniq, inverse = np.unique(tuples[:, :k], return_inverse=True)
        local = tuples.copy()
        local[:, :k] = inverse.reshape(-1, k)
        chosen = [views[i] for i in uniq]
        D = net.embed_all(chosen).requires_grad_(True)
        loss = self.loss(D, local)
        loss.backward()
        grads = D.grad
        opt.zero_grad(set_to_none=False)
        step = GRAD_CHUNK if self.split.trains else len(chosen)
        for c in range(0, len(chosen), step):
            g = grads[c:c + step]
            if torch.any(g != 0):
                (net.embed_many(chosen[c:c + step], chunk=step) * g).sum().backward()
        opt.step()
        return float(loss.detach())

    @staticmethod
    def _line(row: dict, epochs: int) -> str:
        parts = [f"epoch {row['epoch']}/{epochs}"]
        if row.get("loss") is not None:
            parts.append(f"loss {row['loss']:.4f}")
        if row.get("pool_loss") is not None:
            parts.append(f"pool loss {row['pool_loss']:.4f} ({row['active']} of {row['considered']} tuples active)")
        parts.append(f"train mAP {100 * row['train_map']:.2f}")
        if "val_map" in row:
            parts.append(f"val mAP {100 * row['val_map']:.2f} ({row['val']})")
        if "seconds" in row:
            parts.append(f"{row['seconds']:.0f} s")
        return "  ".join(parts)

    # --- resumable state ----------------------------------------------------------------------
    @staticmethod
    def _save(path: Path | None, config_key: dict, net: RMACNet, opt, rng: np.random.Generator, st: dict) -> None:
        if path is None:
            return
        state = {"format": STATE_FORMAT, "config": json.dumps(config_key, sort_keys=True),
                 "trainable": net.trainable_state(), "optimizer": opt.state_dict(),
                 "rng": json.dumps(rng.bit_generator.state),
                 "round": None if st["round"] is None else torch.from_numpy(np.asarray(st["round"], np.int64)),
                 "counters": json.dumps({k: st[k] for k in ("epoch", "update", "steps", "round_id", "round_stats",
                                                             "history", "update_losses", "seconds")})}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    @staticmethod
    def _restore(path: Path, config_key: dict, net: RMACNet, opt, rng: np.random.Generator, st: dict) -> dict:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a bad file
            raise LearningError(f"{path}: not a readable training checkpoint ({type(e).__name__}); remove it to "
                                "start again") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise LearningError(f"{path}: not an instar training checkpoint; remove it or choose another --out")
        if state["config"] != json.dumps(config_key, sort_keys=True):
            raise LearningError(f"{path}: a checkpoint of another training configuration (settings, preset or "
                                "images differ); remove it to start again, or choose another --out")
        net.load_trainable_state(state["trainable"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["rng"])
        st = {**st, **json.loads(state["counters"])}
        st["round"] = None if state["round"] is None else state["round"].numpy()
        return st


def save_model(checkpoint: dict, out: Path) -> None:
    """Write a model checkpoint atomically (a .tmp beside it, then renamed)."""
    tmp = out.with_name(out.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)
