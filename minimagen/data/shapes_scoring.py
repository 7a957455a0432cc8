"""Caption alignment: does a generated image show what its SceneSpec says? (our FID / CLIP score)

The Imagen paper judges caption following with CLIP score and human raters on DrawBench. With the
captioned-shapes dataset (`minimagen.data.shapes`) we can do better: every prompt has a ground-truth
SceneSpec, so we *read the picture back* and compare attribute by attribute.

How an image is read (`detect_objects`), numpy only:
  1. foreground = pixels whose chroma, max(r,g,b) - min(r,g,b), exceeds `min_chroma`. The background is
     grey-ish (white, grey, slightly tinted) and the palette colours are pure hues 60 degrees apart;
     blending a colour with grey scales its chroma but keeps its hue, so anti-aliased edges keep their
     colour. Each foreground pixel gets the palette colour of nearest hue.
  2. connected regions of one colour (4-neighbour flood fill) are the candidate objects, so touching
     objects of two colours stay apart; regions under `min_area` of the image are noise.
  3. coverage alpha per pixel, by projecting onto the palette colour c:
         alpha = <p - bg, c - bg> / |c - bg|^2      (inverts p = alpha * c + (1 - alpha) * bg)
     with bg = mean of the background pixels; area A = sum(alpha) (soft: blur does not change it).
  4. shape by analysis by synthesis: for each shape k, the box of side s_k = sqrt(A / fill_k) has the
     observed area (fill_k = shape area / box area); render it at the observed centroid with the
     dataset's own renderer, blurred as much as fits best (generated images are soft), and keep the k
     with the least squared error sum((alpha - coverage_k)^2); the best two are first refined in
     scale and sub-pixel position (noise moves the measured area and centroid a little).
  5. size: fitted box side / image side against the geometric mean of the two SIZE_FRACTIONs;
     position: the 3x3 cell (thirds of the image) that holds the fitted box's centre.
Images larger than ANALYSIS_SIZE are area-downsampled to it first: the objects are a third of the
image wide, so nothing is lost, and the cost stays flat at 128 px and beyond.

How a scene is scored (`match_scene`, `score_alignment`): each spec object is paired with a different
detection (among the len(objects) + 4 largest), choosing the pairing that agrees on the most
attributes (colour + shape + size + position; ties go to larger detections); with fewer detections
than objects the rest stay unmatched and count as wrong. The relation is read from the two matched
detections' box centres (|dx| >= |dy|: left of / right of, else above / below). "all_correct" needs
every attribute of every object, the relation, and no extra detections. Attribute accuracies are
over objects, relation over two-object scenes (NaN when there are none), all_correct and count over
images.

Map: connected_components -> detect_objects -> match_scene -> score_alignment.
"""
from __future__ import annotations

import colorsys
import functools
import itertools
import math

import numpy as np
import torch
from PIL import Image

from minimagen.data.domains import alignment_summary, check_images_and_specs
from minimagen.data.shapes import (CELL_CENTERS, COLORS, POSITIONS, SHAPES, SIZE_FRACTION, SceneSpec,
                                   shape_coverage, shape_inside)


@functools.lru_cache(maxsize=None)
def _shape_geometry(shape: str, n: int = 400) -> tuple[float, float]:
    """(area / box area, centroid below the box centre in box sides), measured on an n x n grid."""
    t = (np.arange(n) + 0.5) / n * 2 - 1                        # sample centres in [-1, 1]
    inside = shape_inside(shape, t[None, :], t[:, None])         # [n, n], rows = v
    return float(inside.mean()), float((inside * t[:, None]).sum() / inside.sum() / 2)


PALETTE_HUES = {name: 360.0 * colorsys.rgb_to_hsv(*rgb)[0] for name, rgb in COLORS.items()}
BLUR_SIGMAS = (0.0, 0.075, 0.15, 0.225, 0.3)  # template blurs tried, in units of the box side
ANALYSIS_SIZE = 64           # images above this size are area-downsampled to it before analysis
SCALES = (0.95, 1.0, 1.05)    # box sides tried, relative to the one with the observed area
SHIFTS = (-0.3, 0.0, 0.3)     # box centre shifts tried in x and in y, pixels
LARGE_THRESHOLD = math.sqrt(SIZE_FRACTION["small"] * SIZE_FRACTION["large"])  # box side / image side
assert CELL_CENTERS[0] < 1 / 3 < 2 / 3 < CELL_CENTERS[2], "cell centres must lie inside their cells"


def connected_components(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 4-connected regions of equal nonzero value in a [H, W] int (or bool) map.

    Returns (labels [H, W] int32 with regions numbered 1..n and 0 where classes == 0, n)."""
    h, w = classes.shape
    cls = classes.ravel().tolist()              # plain Python lists: much faster to index one by one
    labels = [0] * (h * w)
    n = 0
    for seed in np.flatnonzero(classes).tolist():
        if labels[seed]:
            continue
        n += 1
        labels[seed] = n
        stack = [seed]
        while stack:                            # flood fill; pixel i sits at row i // w, column i % w
            i = stack.pop()
            y, x = divmod(i, w)
            for j, inside in ((i - w, y > 0), (i + w, y < h - 1), (i - 1, x > 0), (i + 1, x < w - 1)):
                if inside and cls[j] == cls[i] and not labels[j]:
                    labels[j] = n
                    stack.append(j)
    return np.asarray(labels, dtype=np.int32).reshape(h, w), n


def _hue(img: np.ndarray) -> np.ndarray:
    """Hue in degrees of [..., 3] RGB (the HSV hexcone formula; grey pixels get 0)."""
    r, g, b = np.moveaxis(img, -1, 0)
    mx, mn = img.max(axis=-1), img.min(axis=-1)
    c = np.where(mx > mn, mx - mn, 1.0)                                         # chroma, 1 where grey
    h = np.where(mx == r, (g - b) / c % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return 60.0 * h


def _nearest_color_index(img: np.ndarray) -> np.ndarray:
    """Index into COLORS of the palette hue nearest (around the colour wheel) to each pixel's hue."""
    diff = np.abs(_hue(img)[..., None] - np.asarray(list(PALETTE_HUES.values())))  # [..., n_colors]
    return np.minimum(diff, 360.0 - diff).argmin(axis=-1)


@functools.lru_cache(maxsize=64)
def _offsets(n: int) -> np.ndarray:
    i = np.arange(n)
    return i[:, None] - i[None, :]                                   # [n, n], row minus column


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """[h, w] image blurred by a Gaussian of std `sigma` pixels, as G_h @ image @ G_w^T (zeros outside)."""
    if sigma == 0:
        return image
    (h, w), n = image.shape, max(image.shape)
    kernel = np.exp(-np.arange(-n + 1, n) ** 2 / (2 * sigma**2))    # [2n - 1], offsets -(n-1) .. n-1
    kernel /= kernel.sum()                                           # rows away from the edges sum to 1
    return kernel[_offsets(h) + n - 1] @ image @ kernel[_offsets(w) + n - 1].T


def _fit_shape(alpha: np.ndarray, area: float, centroid: tuple[float, float],
               blur_sigmas: tuple[float, ...]) -> tuple[str, float, tuple[float, float]]:
    """Analysis by synthesis: the shape whose rendered coverage best explains `alpha` (least squares).

    Each shape's box starts with the observed area and centroid and the best-fitting blur (sigma in
    box sides). The two best shapes are then refined, in turn, in scale and by a sub-pixel shift, since
    noise moves the measured area and centroid a little. Returns (shape, box side, box centre (x, y))
    in the window's pixels."""
    hh, ww = alpha.shape

    @functools.cache
    def coverage(shape, scale, dx, dy):
        fill, below = _shape_geometry(shape)
        side = scale * math.sqrt(area / fill)                       # box whose shape has the observed area
        center = (centroid[0] + dx, centroid[1] - below * side + dy)
        return shape_coverage(shape, center, side, hh, ww), side, center   # [hh, ww], side, (x, y)

    @functools.cache
    def error(shape, sigma, scale=1.0, dx=0.0, dy=0.0):
        cover, side, _ = coverage(shape, scale, dx, dy)
        template = _blur(cover, sigma * side)
        return ((alpha - template) ** 2).sum()                      # sum (alpha - coverage_k)^2

    sigma = {k: min(blur_sigmas, key=lambda b: error(k, b)) for k in SHAPES}           # 1. blur
    finalists = sorted(SHAPES, key=lambda k: error(k, sigma[k]))[:2]
    best = None
    for shape in finalists:
        scale = min(SCALES, key=lambda c: error(shape, sigma[shape], c))                 # 2. size
        dx, dy = min(((x, y) for x in SHIFTS for y in SHIFTS),
                     key=lambda d: error(shape, sigma[shape], scale, *d))               # 3. position
        if best is None or error(shape, sigma[shape], scale, dx, dy) < best[0]:
            best = (error(shape, sigma[shape], scale, dx, dy), shape, *coverage(shape, scale, dx, dy)[1:])
    return best[1:]


def _cell(fraction: float) -> int:
    return min(max(int(fraction * 3), 0), 2)  # 3x3 grid cell index of a coordinate in [0, 1]


def _box_downsample(img: np.ndarray, size: int) -> np.ndarray:
    """Area-average [H, W, 3] so that its longer side is `size` (PIL's box filter, float32 per channel)."""
    h, w, _ = img.shape
    new = (max(round(w * size / max(h, w)), 1), max(round(h * size / max(h, w)), 1))  # PIL wants (w, h)
    channels = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F")
                           .resize(new, Image.Resampling.BOX)) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.float64)                       # [h', w', 3]


def detect_objects(image: torch.Tensor, min_chroma: float = 0.35, min_area: float = 0.01,
                   margin: int = 2, blur_sigmas: tuple[float, ...] = BLUR_SIGMAS,
                   analysis_size: int = ANALYSIS_SIZE) -> list[dict]:
    """Find coloured objects in one [3, H, W] image in [0, 1] (see the module docstring).

    Returns one dict per object, largest first: color, shape, size, position (vocabulary words),
    centroid (x, y) and box_center (x, y) as fractions of the width/height, area (fraction of the image),
    side (fitted box side / image side). `min_chroma`: foreground threshold; `min_area`: smallest kept
    object as a fraction of the image; `margin`: pixels around each component searched for soft edges;
    `analysis_size`: larger images are first box-filtered down to this many pixels (objects span at
    least a third of the image, so nothing is lost, and it keeps the cost flat)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}; expected [3, H, W] with values in [0, 1]")
    img = image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float64)   # [H, W, 3]
    if img.min() < -0.01 or img.max() > 1.01:
        raise ValueError(f"image values span [{img.min():.2f}, {img.max():.2f}]; expected [0, 1] "
                         "(map diffusion samples in [-1, 1] with (x + 1) / 2 and clamp)")
    if max(img.shape[:2]) > analysis_size:
        img = _box_downsample(img, analysis_size)                               # longer side = 64
    h, w, _ = img.shape
    chroma = img.max(axis=2) - img.min(axis=2)                                  # [H, W]
    foreground = chroma > min_chroma
    classes = np.where(foreground, 1 + _nearest_color_index(img), 0)            # [H, W], 0 = background
    regions, n = connected_components(classes)  # one colour per region: touching objects stay apart
    labels = np.zeros((h, w), dtype=np.int32)   # regions big enough to be objects, numbered 1..
    colors = []                                 # colors[k - 1] = colour of object label k
    pixel_counts = np.bincount(regions.ravel(), minlength=n + 1)                # [n + 1]
    for r in np.flatnonzero(pixel_counts[1:] >= 0.5 * min_area * h * w) + 1:   # drop specks of noise
        member = regions == r
        colors.append(list(COLORS)[classes[member][0] - 1])                    # classes are 1 + index
        labels[member] = len(colors)
    background = img[~foreground].mean(axis=0) if (~foreground).any() else np.ones(3)  # [3]
    found = []
    for k, color in enumerate(colors, start=1):
        member = labels == k
        py, px = np.nonzero(member)
        y0, y1 = max(py.min() - margin, 0), min(py.max() + margin + 1, h)      # window around it
        x0, x1 = max(px.min() - margin, 0), min(px.max() + margin + 1, w)
        d = np.asarray(COLORS[color]) - background                              # c - bg, [3]
        alpha = (img[y0:y1, x0:x1] - background) @ d / (d @ d)                  # [wh, ww]
        alpha[(labels[y0:y1, x0:x1] != 0) & ~member[y0:y1, x0:x1]] = 0.0       # not other objects
        area = alpha.sum()
        if area < min_area * h * w:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5                                   # pixel centres
        cx, cy = (alpha * xs).sum() / area, (alpha * ys).sum() / area           # centroid in pixels
        shape, side, (bx, by) = _fit_shape(alpha, area, (cx - x0, cy - y0), blur_sigmas)
        bx, by = bx + x0, by + y0
        found.append({
            "color": color, "shape": shape,
            "size": "large" if side / math.sqrt(h * w) > LARGE_THRESHOLD else "small",
            "position": POSITIONS[3 * _cell(by / h) + _cell(bx / w)],
            "centroid": (cx / w, cy / h), "box_center": (bx / w, by / h),
            "area": area / (h * w), "side": side / math.sqrt(h * w),
        })
    return sorted(found, key=lambda o: -o["area"])


def relation_between(a: dict, b: dict) -> str:
    """Relation of detection a to detection b from their box centres (image y grows downwards)."""
    dx = a["box_center"][0] - b["box_center"][0]
    dy = a["box_center"][1] - b["box_center"][1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


ATTRIBUTES = ("color", "shape", "size", "position")
MAX_EXTRA_CANDIDATES = 4  # matching looks at the len(spec.objects) + 4 largest detections


def match_scene(detections: list[dict], spec: SceneSpec) -> dict:
    """Pair spec objects with detections and judge them (see the module docstring).

    Returns {"matches": [detection or None per object], "objects": [{attribute: bool} per object],
    "relation": bool or None (one-object spec), "count": bool, "all_correct": bool}."""
    objs = spec.objects
    candidates = range(min(len(detections), len(objs) + MAX_EXTRA_CANDIDATES))  # largest ones only
    best, best_score = [None] * len(objs), -1
    for perm in itertools.permutations(candidates, min(len(objs), len(candidates))):
        # detections are sorted largest first, so on ties the earliest (largest) pairing wins
        score = sum(detections[j][a] == getattr(o, a) for o, j in zip(objs, perm) for a in ATTRIBUTES)
        if score > best_score:
            best, best_score = [detections[j] for j in perm] + [None] * (len(objs) - len(perm)), score
    judged = [{a: m is not None and m[a] == getattr(o, a) for a in ATTRIBUTES} for o, m in zip(objs, best)]
    relation = None
    if len(objs) == 2:
        relation = None not in best and relation_between(best[0], best[1]) == spec.relation
    count = len(detections) == len(objs)
    all_correct = count and all(all(j.values()) for j in judged) and relation is not False
    return {"matches": best, "objects": judged, "relation": relation, "count": count,
            "all_correct": all_correct}


def score_alignment(images, specs: list[SceneSpec], **detect_kwargs) -> dict[str, float]:
    """Per-attribute accuracy of `images` ([N, 3, H, W] or a list of [3, H, W], in [0, 1]) against specs.

    Keys: color, shape, size, position (over objects), relation (over two-object specs; NaN if none),
    count and all_correct (over images), n (images), n_objects, n_relations. `detect_kwargs` go to
    detect_objects."""
    check_images_and_specs(images, specs)
    return alignment_summary([match_scene(detect_objects(image, **detect_kwargs), spec)
                              for image, spec in zip(images, specs)], ATTRIBUTES)
