"""Box estimation by matching (Gordo et al., Deep Image Retrieval, sec. 4 "Bounding box estimation"): where is
the object of one image in another image of the same object?

Keypoints are RootSIFT (`instar.extract.features.local`); a keypoint of image A matches one of image B when B's is A's
nearest neighbour by Lowe's ratio test (nearest closer than `ratio` x the second nearest) and A's is B's nearest
too (mutual); a RANSAC homography (`cv2.findHomography`) verifies the matches. Two ways to turn verified
matches into a box, both here:

- ``mode="frame"``: project the reference image's whole frame into the photo through the homography and take
  the bounding box of the projected quadrilateral. Right when the reference *is* the object, edge to edge, and
  the object is flat: a DVD cover and its scan (smvs-dvd-covers), a poster, a painting. It recovers the whole
  object even where the photo's keypoints are few (glare, blur).
- ``mode="inliers"``: the bounding box of the photo's inlier keypoints (Gordo et al.'s initial boxes: "the
  minimum rectangle enclosing all matched keypoints"). Right for general objects (3-D, the reference shows
  background too); boxes are as tight as the keypoints, so they can fall short of the object's edges.

Where each is used: `instar estimate-boxes DIR --reference-folder NAME` (one clean reference per object, as
smvs-dvd-covers' `Reference/` scans) uses ``frame``; `instar estimate-boxes DIR` on one sub-folder per object
(and `instar train-proposals DIR` without `--boxes`) uses ``inliers``: every image is matched with every other
image of its sub-folder and its box is the coordinate-wise median of the per-pair inlier boxes (a robust
stand-in for Gordo et al.'s geometric median; their diffusion of boxes along the matching graph is not done).

Boxes are [x0, y0, x1, y1] float pixels of the image as loaded (EXIF orientation applied, full resolution).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image

from ..core.progress import Progress, no_progress
from ..extract.features.local import rootsift
from ..extract.images import ImageLoadError, list_images, load_image, resize_longest

MODES = ("frame", "inliers")

# defaults, also the CLI's
RATIO = 0.8            # Lowe's ratio test
MIN_INLIERS = 15       # fewer verified matches than this: no box
REPROJ_THRESHOLD = 5.0  # RANSAC inlier distance, pixels of the matched images
MAX_KEYPOINTS = 2000
MATCH_SIZE = 1024      # images are matched with their longest side at most this many pixels


class MatchingError(ValueError):
    """A folder or boxes file that box estimation cannot use; the message names it and says why."""


@dataclass
class ImageFeatures:
    """One image's keypoints for matching: `points` (N, 2) float32 x, y and RootSIFT `descriptors` (N, 128)
    float32, in the pixels of an image of `size` (W, H)."""
    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]


class BoxEstimate(NamedTuple):
    """A box [x0, y0, x1, y1] (float64, pixels of the photo) and the number of RANSAC inliers behind it."""
    box: np.ndarray
    inliers: int


@dataclass
class Verified:
    """Matches of A to B that a homography verifies: `homography` (3, 3) maps A's pixels to B's;
    `points_a`, `points_b` (K, 2) the inlier keypoint pairs; `pairs` (K, 2) their keypoint indices (in A, in B)."""
    homography: np.ndarray
    points_a: np.ndarray
    points_b: np.ndarray
    pairs: np.ndarray | None = None

    @property
    def inliers(self) -> int:
        return len(self.points_a)


def image_features(image: Image.Image, max_keypoints: int = MAX_KEYPOINTS) -> ImageFeatures:
    """RootSIFT keypoints of a PIL image (the `max_keypoints` strongest)."""
    points, desc = rootsift(image, max_keypoints)
    return ImageFeatures(np.ascontiguousarray(points[:, :2]), desc, image.size)


def _features(x: Image.Image | ImageFeatures, max_keypoints: int) -> ImageFeatures:
    return x if isinstance(x, ImageFeatures) else image_features(x, max_keypoints)


def match_keypoints(a: ImageFeatures, b: ImageFeatures, ratio: float = RATIO, mutual: bool = True) -> np.ndarray:
    """(M, 2) int64 index pairs (i in A, j in B): B's j is A's i's nearest neighbour passing the ratio test and,
    if `mutual`, A's i is also j's nearest neighbour in A."""
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return np.zeros((0, 2), np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = []
    for m, n in matcher.knnMatch(a.descriptors, b.descriptors, k=2):
        if m.distance < ratio * n.distance:
            pairs.append((m.queryIdx, m.trainIdx))
    out = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if mutual and len(out):
        back = matcher.match(b.descriptors, a.descriptors)  # B's nearest in A, for every keypoint of B
        nearest_in_a = np.empty(len(b.descriptors), np.int64)
        for m in back:
            nearest_in_a[m.queryIdx] = m.trainIdx
        out = out[nearest_in_a[out[:, 1]] == out[:, 0]]
    return out


def verify(a: ImageFeatures, b: ImageFeatures, pairs: np.ndarray, reproj_threshold: float = REPROJ_THRESHOLD,
           min_inliers: int = MIN_INLIERS) -> Verified | None:
    """A RANSAC homography from A to B over the matched `pairs`; None with fewer than `min_inliers` inliers."""
    if len(pairs) < max(4, min_inliers):
        return None
    src = a.points[pairs[:, 0]].astype(np.float64)
    dst = b.points[pairs[:, 1]].astype(np.float64)
    H, mask = cv2.findHomography(src, dst, cv2.RANSAC, reproj_threshold, maxIters=5000, confidence=0.999)
    if H is None or mask is None:
        return None
    keep = mask.ravel().astype(bool)
    if keep.sum() < max(4, min_inliers):
        return None
    return Verified(H, src[keep], dst[keep], pairs[keep])


def project_frame(homography: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """The (4, 2) corners of a W x H frame mapped by `homography`, or None when the mapping folds the frame
    (a corner behind the camera, or a quadrilateral that is not convex)."""
    W, H = size
    corners = np.array([[0, 0, 1], [W, 0, 1], [W, H, 1], [0, H, 1]], dtype=np.float64)
    mapped = corners @ np.asarray(homography, np.float64).T
    if not np.all(mapped[:, 2] > 1e-9):
        return None
    quad = mapped[:, :2] / mapped[:, 2:]
    if not np.all(np.isfinite(quad)) or not cv2.isContourConvex(quad.astype(np.float32).reshape(-1, 1, 2)):
        return None
    return quad


def _clip(box: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    W, H = size
    x0, y0, x1, y1 = np.clip(box, 0, [W, H, W, H])
    return np.array([x0, y0, x1, y1], np.float64) if x1 > x0 and y1 > y0 else None


def frame_box(verified: Verified, reference_size: tuple[int, int], photo_size: tuple[int, int]) -> np.ndarray | None:
    """The bounding box, clipped to the photo, of the reference's frame projected into it (None: degenerate)."""
    quad = project_frame(verified.homography, reference_size)
    if quad is None:
        return None
    # a homography that blows the frame up far beyond the photo (or shrinks it to a speck) fits its inliers by
    # accident; the object must also contain them
    area = cv2.contourArea(quad.astype(np.float32))
    photo_area = photo_size[0] * photo_size[1]
    if not (1e-3 * photo_area < area < 25 * photo_area):
        return None
    return _clip(np.array([quad[:, 0].min(), quad[:, 1].min(), quad[:, 0].max(), quad[:, 1].max()]), photo_size)


def inlier_box(verified: Verified, photo_size: tuple[int, int]) -> np.ndarray | None:
    """The bounding box of the photo's inlier keypoints, clipped to the photo."""
    p = verified.points_b
    return _clip(np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]), photo_size)


def estimate_box(reference: Image.Image | ImageFeatures, photo: Image.Image | ImageFeatures, *, mode: str = "frame",
                 ratio: float = RATIO, min_inliers: int = MIN_INLIERS, reproj_threshold: float = REPROJ_THRESHOLD,
                 max_keypoints: int = MAX_KEYPOINTS) -> BoxEstimate | None:
    """Where the object of `reference` is in `photo`: (box in photo pixels, inliers), or None when the matches
    do not verify (too few inliers, a degenerate homography). `mode` "frame" projects the reference's whole
    frame (flat objects whose reference is the object), "inliers" boxes the inlier keypoints (general objects).
    Either argument may be a PIL image or its precomputed `ImageFeatures`."""
    if mode not in MODES:
        raise ValueError(f"box mode {mode!r} is not one of {', '.join(MODES)}")
    ref = _features(reference, max_keypoints)
    pho = _features(photo, max_keypoints)
    verified = verify(ref, pho, match_keypoints(ref, pho, ratio), reproj_threshold, min_inliers)
    if verified is None:
        return None
    box = frame_box(verified, ref.size, pho.size) if mode == "frame" else inlier_box(verified, pho.size)
    return None if box is None else BoxEstimate(box, verified.inliers)


def median_box(boxes: Sequence[np.ndarray]) -> np.ndarray:
    """Coordinate-wise median of (4,) boxes."""
    return np.median(np.stack([np.asarray(b, np.float64) for b in boxes]), axis=0)


# ----------------------------------------------------------------------------- folders


@dataclass
class BoxRecord:
    """One image's estimated box: `box` [x0, y0, x1, y1] in the original image's pixels (None: not found),
    `inliers` (the best verified pair's; None for a reference), `pairs` verified / tried (inliers mode),
    `reference` (the image is an object's reference: its box is the whole image)."""
    box: list[float] | None
    inliers: int | None
    pairs: tuple[int, int] | None = None
    reference: bool = False

    def to_json(self) -> dict:
        out: dict = {"box": None if self.box is None else [round(float(v), 2) for v in self.box],
                     "inliers": self.inliers}
        if self.pairs is not None:
            out["pairs"] = list(self.pairs)
        if self.reference:
            out["reference"] = True
        return out


@dataclass
class _Loaded:
    features: ImageFeatures
    scale: float  # original pixels per matched pixel
    original_size: tuple[int, int]



def _load(path: Path, max_size: int, max_keypoints: int) -> _Loaded:
    full = load_image(path)
    small = resize_longest(full, max_size)
    return _Loaded(image_features(small, max_keypoints), full.width / small.width, full.size)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def boxes_from_references(root: Path | str, reference_folder: str, *, mode: str = "frame", ratio: float = RATIO,
                          min_inliers: int = MIN_INLIERS, reproj_threshold: float = REPROJ_THRESHOLD,
                          max_keypoints: int = MAX_KEYPOINTS, max_size: int = MATCH_SIZE,
                          progress: Progress = no_progress,
                          problems: list[tuple[Path, str]] | None = None) -> dict[str, BoxRecord]:
    """The smvs layout: `root/<reference_folder>/<id>.jpg` is object <id>'s reference; every other sub-folder
    holds views named by object id (`Canon/001.jpg`). Each view's box comes from matching it with its
    reference; each reference's box is its whole frame. Keys are paths relative to `root` (posix)."""
    root = Path(root)
    if not root.is_dir():
        raise MatchingError(f"{root}: not a folder")
    ref_dir = root / reference_folder
    if not ref_dir.is_dir():
        raise MatchingError(f"{ref_dir}: no reference folder {reference_folder!r} in {root}")
    references = {p.stem: p for p in list_images(ref_dir)}
    if not references:
        raise MatchingError(f"{ref_dir}: no reference images")
    views = [p for p in list_images(root) if p.parent != ref_dir]
    if not views:
        raise MatchingError(f"{root}: no images besides the references in {reference_folder}/")
    problems = [] if problems is None else problems
    out: dict[str, BoxRecord] = {}
    ref_cache: dict[str, _Loaded | None] = {}

    def reference(stem: str) -> _Loaded | None:
        if stem not in ref_cache:
            try:
                ref_cache[stem] = _load(references[stem], max_size, max_keypoints)
            except ImageLoadError as e:
                problems.append((references[stem], e.reason))
                ref_cache[stem] = None
            else:
                W, H = ref_cache[stem].original_size
                out[_rel(references[stem], root)] = BoxRecord([0.0, 0.0, float(W), float(H)], None, reference=True)
        return ref_cache[stem]

    for path in progress(views, desc="matching views with their references"):
        if path.stem not in references:
            problems.append((path, f"no reference {reference_folder}/{path.stem}.* to match it with"))
            continue
        ref = reference(path.stem)
        if ref is None:
            continue
        try:
            view = _load(path, max_size, max_keypoints)
        except ImageLoadError as e:
            problems.append((path, e.reason))
            continue
        est = estimate_box(ref.features, view.features, mode=mode, ratio=ratio, min_inliers=min_inliers,
                           reproj_threshold=reproj_threshold)
        if est is None:
            out[_rel(path, root)] = BoxRecord(None, _inlier_count(ref.features, view.features, ratio, reproj_threshold))
        else:
            out[_rel(path, root)] = BoxRecord((est.box * view.scale).tolist(), est.inliers)
    for stem in sorted(references):  # references of objects without views still get their whole-frame box
        reference(stem)
    return dict(sorted(out.items()))


def _inlier_count(a: ImageFeatures, b: ImageFeatures, ratio: float, reproj_threshold: float) -> int:
    """How many inliers a failed pair had (0 when no homography could be fitted), for the record."""
    v = verify(a, b, match_keypoints(a, b, ratio), reproj_threshold, min_inliers=4)
    return 0 if v is None else v.inliers


def boxes_from_object_folders(root: Path | str, *, ratio: float = RATIO, min_inliers: int = MIN_INLIERS,
                              reproj_threshold: float = REPROJ_THRESHOLD, max_keypoints: int = MAX_KEYPOINTS,
                              max_size: int = MATCH_SIZE, progress: Progress = no_progress,
                              problems: list[tuple[Path, str]] | None = None) -> dict[str, BoxRecord]:
    """One sub-folder per object (`root/<object>/*.jpg`, searched recursively): every image is matched with
    every other image of its sub-folder; its box is the coordinate-wise median of the inlier boxes of the pairs
    that verify (None if none does). Images directly in `root` belong to no object and are reported."""
    root = Path(root)
    if not root.is_dir():
        raise MatchingError(f"{root}: not a folder")
    problems = [] if problems is None else problems
    groups: dict[str, list[Path]] = {}
    for p in list_images(root):
        parts = p.relative_to(root).parts
        if len(parts) < 2:
            problems.append((p, "directly in the folder, not in an object's sub-folder"))
            continue
        groups.setdefault(parts[0], []).append(p)
    if not groups:
        raise MatchingError(f"{root}: no sub-folders of images (one sub-folder of views per object is needed)")
    out: dict[str, BoxRecord] = {}
    for name in progress(sorted(groups), desc="matching within each object's folder"):
        loaded: list[tuple[Path, _Loaded]] = []
        for p in groups[name]:
            try:
                loaded.append((p, _load(p, max_size, max_keypoints)))
            except ImageLoadError as e:
                problems.append((p, e.reason))
        if len(loaded) < 2:
            for p, _ in loaded:
                problems.append((p, f"the only readable image of {name}/: nothing to match it with"))
                out[_rel(p, root)] = BoxRecord(None, 0, (0, 0))
            continue
        boxes: dict[int, list[np.ndarray]] = {i: [] for i in range(len(loaded))}
        best = [0] * len(loaded)
        for i in range(len(loaded)):
            for j in range(i + 1, len(loaded)):
                a, b = loaded[i][1].features, loaded[j][1].features
                v = verify(a, b, match_keypoints(a, b, ratio), reproj_threshold, min_inliers)
                if v is None:
                    continue
                for k, pts, size, scale in ((i, v.points_a, a.size, loaded[i][1].scale),
                                            (j, v.points_b, b.size, loaded[j][1].scale)):
                    box = _clip(np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]), size)
                    if box is not None:
                        boxes[k].append(box * scale)
                        best[k] = max(best[k], v.inliers)
        for k, (p, _) in enumerate(loaded):
            tried = len(loaded) - 1
            box = median_box(boxes[k]).tolist() if boxes[k] else None
            out[_rel(p, root)] = BoxRecord(box, best[k], (len(boxes[k]), tried))
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- boxes files


def write_boxes_json(records: dict[str, BoxRecord], path: Path | str) -> None:
    """Write {relative image path: {"box": [x0, y0, x1, y1] or null, "inliers": n, ...}} as JSON."""
    lines = [f" {json.dumps(k)}: {json.dumps(r.to_json())}" for k, r in records.items()]  # one image a line
    Path(path).write_text("{\n" + ",\n".join(lines) + "\n}\n")


def read_boxes_json(path: Path | str) -> dict[str, list[float] | None]:
    """{relative image path: [x0, y0, x1, y1] or None} from a boxes file as `write_boxes_json` writes it; a
    value may also be a bare [x0, y0, x1, y1] list or null (a hand-written file). Raises MatchingError naming
    the file and the entry for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MatchingError(f"{path}: no such boxes file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MatchingError(f"{path}: cannot read the boxes file ({e})") from None
    except json.JSONDecodeError as e:
        raise MatchingError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise MatchingError(f"{path}: expected an object {{image path: box}}, found {type(data).__name__}")
    out: dict[str, list[float] | None] = {}
    for name, value in data.items():
        box = value.get("box") if isinstance(value, dict) else value
        if box is None:
            out[name] = None
            continue
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise MatchingError(f"{path}: {name!r}: a box must be [x0, y0, x1, y1] (four finite numbers) or null")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise MatchingError(f"{path}: {name!r}: box {box} is empty (need x1 > x0 and y1 > y0)")
        out[name] = [float(v) for v in box]
    return out
