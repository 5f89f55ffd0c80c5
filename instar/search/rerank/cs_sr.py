"""The `cs-sr` re-ranker, Salvador et al.'s class-specific spatial re-ranking (sec. 3.3): the top N re-scored by their
best region's class probability for the query's object under a classifier trained on the query objects
(`instar train-cs-sr`, `instar.learning.cssr`), and the classifier itself (`CSSRHead`, its checkpoint format)."""
from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.checkpoints import WeightsError, read_checkpoint
from ...core.protocols import RerankStage
from ...core.registry import RERANKERS, Range
from ..types import Database, Query, Ranking

FORMAT = "instar-cssr/1"


class CSSRHead(nn.Module):
    """L2-normalised region descriptor (C,) -> fc (hidden) -> ReLU -> fc (K + 1) logits; class 0 is background."""

    def __init__(self, in_channels: int, classes: int, hidden: int = 256):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


# ----------------------------------------------------------------------------- training set


def load_cssr(weights: str) -> tuple[CSSRHead, dict]:
    """The classifier of a checkpoint `instar train-cs-sr` wrote; WeightsError naming the file otherwise."""
    if not weights:
        raise WeightsError("rerank.method = 'cs-sr' needs rerank.weights: the classifier .pth instar train-cs-sr wrote")
    obj = read_checkpoint(weights)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(sd, dict):
        raise WeightsError(f"{weights}: not a CS-SR classifier (instar train-cs-sr writes one)")
    head_sd = {k[len("cssr."):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith("cssr.")}
    try:
        head = CSSRHead(int(meta["in_channels"]), len(meta["classes"]), int(meta["hidden"]))
        head.load_state_dict(head_sd, strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise WeightsError(f"{weights}: damaged CS-SR classifier ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return head.eval(), meta


@RERANKERS.register("cs-sr")
class CSSR(RerankStage):
    """CS-SR: the top N re-scored by their best region's class probability for the query's object (Salvador et al. sec. 3.3)."""
    needs_regions = True
    reads_region_descriptors = True
    region_pooling = ("max",)

    def __init__(self, *, weights: str = "", top: Annotated[int, Range(ge=1)] = 100):
        self.weights, self.top = weights, top
        self._head: tuple[CSSRHead, dict] | None = None

    def head(self) -> tuple[CSSRHead, dict]:
        if self._head is None:
            self._head = load_cssr(self.weights)
        return self._head

    def query_class(self, query: Query) -> int:
        """The object (1..K) the classifier gives the query box."""
        head, _ = self.head()
        q = torch.from_numpy(np.asarray(query.box_descriptor, np.float32))[None]
        with torch.no_grad():
            return int(head(q)[0, 1:].argmax()) + 1

    def best_regions(self, db: Database, query: Query, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of `positions`: its best region's probability of the query's object, and that region's box
        (original pixels); (n,) float32, (n, 4) float32 (NaN where an image has no region)."""
        head, meta = self.head()
        table = db.require_regions("rerank.method = 'cs-sr'", descriptors=True)
        if table.descriptors.shape[1] != int(meta["in_channels"]):
            raise WeightsError(f"{self.weights}: the classifier takes {meta['in_channels']}-D region descriptors, this "
                               f"index stores {table.descriptors.shape[1]}-D (another trunk tap?)")
        k = self.query_class(query)
        scores = np.full(len(positions), -np.inf, np.float32)
        boxes = np.full((len(positions), 4), np.nan, np.float32)
        with torch.no_grad():
            for n, pos in enumerate(np.asarray(positions, np.int64)):
                start, count = int(table.starts[pos]), int(table.counts[pos])
                if count == 0:
                    continue
                x = torch.from_numpy(np.array(table.descriptors[start:start + count], np.float32))
                p = F.softmax(head(x), dim=1)[:, k]
                best = int(p.argmax())
                scores[n] = float(p[best])
                boxes[n] = table.boxes[start + best]
        return scores, boxes

    def __call__(self, db: Database, query: Query, ranking: Ranking) -> Ranking:
        n = min(self.top, len(ranking))
        scores, boxes = self.best_regions(db, query, ranking.positions[:n])
        return ranking.rescore_head(scores, boxes)

    def localise(self, db: Database, query: Query, positions: np.ndarray) -> np.ndarray:
        return self.best_regions(db, query, positions)[1]
