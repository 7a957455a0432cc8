"""Caption alignment for the scenes domain: read a picture back into objects and compare with its SceneSpec.

Same idea and output as `shapes_scoring` (per-attribute accuracy, "all_correct"), but the method is
analysis by synthesis with the scene renderer itself, which is exact on real renders:

  1. Images larger than ANALYSIS_SIZE are box-filtered down to it (the renderer's own filter, so a
     128 px render becomes the 32 px render); smaller ones are analysed at their own size.
  2. Objects stand in three fixed slots. For each slot and each of the 16 (shape, size, material)
     candidates k, `scenes_render.object_layers` gives the candidate in the room, linear in its albedo c:
         image = c * W_k + S_k + g * K_k * behind            (per colour channel)
     W_k: albedo weight, S_k: highlight, K_k = (1 - coverage) * shadow: what is left of the room
     `behind` (the empty room, or in a second round the room with the other slots' fitted objects).
     Least squares over the slot's window fits (c, g) per channel (a 2 x 2 system); the gain g lets a
     generated image's room be a little brighter, darker or tinted. The candidate with the least
     residual E_k names shape, size and material; c names the colour: the palette colour of nearest
     hue, so a brighter or duller rendition of a colour still counts.
  3. Generated images are imperfect: if the best fit is not exact (E_k above EXACT per value), the
     search is repeated over VARIANTS of every candidate, moved by up to SHIFT px and blurred by up to
     max(BLURS) px (at 32 px), keeping each candidate's best variant.
  4. The slot holds an object if the candidate explains the window much better than the empty room
     ((E_empty - E_k) / (3 object pixels) >= MIN_EXPLAINED), fits it (E_k / window values <=
     MAX_RESIDUAL) and has a colour (chroma of c >= MIN_CHROMA: the room is grey, the palette is not).
  5. `match_scene` pairs spec objects with detections (the pairing that agrees on most attributes),
     relations are read from the matched slots' order, and "all_correct" needs every attribute of every
     object, the relation and no extra object.

Map: _slot_models (+ _variants) -> _fit_slot -> detect_objects -> match_scene -> score_alignment.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

from .domains import alignment_summary, check_images_and_specs
from .scenes import SceneSpec
from .scenes_render import COLORS, MATERIALS, POSITIONS, SHAPES, SIZES, VIEW, background_image, object_layers
from .shapes_scoring import _box_downsample, _hue

ANALYSIS_SIZE = 32        # larger images are box-filtered to this side first (objects are >= 6 px wide there)
MIN_EXPLAINED = 0.004     # (E_empty - E_k) / (3 * object pixels): mean squared change an object must make
MAX_RESIDUAL = 0.015      # E_k / (3 * window pixels): a present object's fit (noise of sigma 0.12 passes)
MIN_CHROMA = 0.12         # max - min of the fitted albedo; palette chroma >= 0.28, the room's ~0.1
EXACT = 1e-4              # E_k / window values below this: a clean render, no variants needed
SHIFT = 0.75              # variants move objects by -SHIFT, 0, +SHIFT px of the analysed image, across and down
BLURS = (0.0, 0.6, 1.2)   # ... and blur them by these Gaussian sigmas, px at 32 px
CANDIDATES = tuple(itertools.product(SHAPES, SIZES, MATERIALS))   # 16 (shape, size, material)
PALETTE_HUES = np.array([_hue(np.asarray(rgb, dtype=np.float64)[None])[0] for rgb in COLORS.values()])
ATTRIBUTES = ("color", "shape", "size", "material", "position")


def _window(j: int, size: int, layers: list[dict]) -> tuple[slice, slice]:
    """Slot j's third of the columns, and the rows any candidate or its shadow changes there."""
    cols = slice(int(j * size / 3), int(np.ceil((j + 1) * size / 3)))
    touched = np.zeros(size, dtype=bool)
    for lay in layers:
        touched |= ((lay["coverage"] > 0) | (lay["shadow"] < 1))[:, cols].any(axis=1)
    return slice(int(np.argmax(touched)), int(size - np.argmax(touched[::-1]))), cols


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Blur [H, W, C] by a Gaussian of `sigma` px, G x G^T with G's rows summing to 1 (edges renormalised)."""
    n = x.shape[0]
    i = np.arange(n)
    g = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))   # [n, n]
    g /= g.sum(axis=1, keepdims=True)
    rows = (g @ x.reshape(n, -1)).reshape(x.shape)                   # blur down the columns
    return np.swapaxes((g @ np.swapaxes(rows, 0, 1).reshape(n, -1)).reshape(x.shape), 0, 1)  # then along rows


def _stack(layers: list[dict], background: np.ndarray, win, sigma: float = 0.0) -> dict[str, np.ndarray]:
    """Window arrays for the fit: W [K, h, w, 1], S [K, h, w, 3], KB [K, h, w, 3] = K_k * background,
    each blurred by `sigma` px over the whole image first (the image model is linear, so blurring the
    image blurs every layer)."""
    out = {"W": [], "S": [], "KB": []}
    for lay in layers:
        keep = ((1 - lay["coverage"]) * lay["shadow"])[..., None] * background   # [H, W, 3]
        for key, x in (("W", lay["albedo_weight"][..., None]), ("S", lay["highlight"]), ("KB", keep)):
            out[key].append((_gaussian_blur(x, sigma) if sigma else x)[win])
    return {k: np.stack(v) for k, v in out.items()}


@functools.lru_cache(maxsize=8)
def _slot_models(size: int) -> tuple[np.ndarray, list[dict]]:
    """(background [size, size, 3], one model per slot): its window (rows, cols), the unmoved, unblurred
    candidates' window arrays (see _stack), and their whole-image layers for drawing them as context."""
    background = background_image(size)
    models = []
    for position in POSITIONS:
        layers = [object_layers(s, z, m, position, size) for s, z, m in CANDIDATES]
        rows, cols = _window(POSITIONS.index(position), size, layers)
        full = {k: np.stack([lay[k] for lay in layers]) for k in ("albedo_weight", "highlight", "coverage", "shadow")}
        models.append({"rows": rows, "cols": cols, "area": full["coverage"].sum(axis=(1, 2)),  # [K] pixels
                       "fit": _stack(layers, background, (rows, cols)), **full})
    return background, models


@functools.lru_cache(maxsize=8)
def _variants(size: int) -> list[dict]:
    """Per slot: window arrays of every candidate moved and blurred ([V * K, ...], variant-major)."""
    background, models = _slot_models(size)
    px = VIEW / size                                                  # world units per analysed pixel
    shifts = [(da * SHIFT * px, db * SHIFT * px) for da in (-1, 0, 1) for db in (-1, 0, 1)]
    out = []
    for m, position in zip(models, POSITIONS):
        parts = []
        for offset in shifts:
            layers = [object_layers(s, z, mat, position, size, offset=offset) for s, z, mat in CANDIDATES]
            parts += [_stack(layers, background, (m["rows"], m["cols"]), sigma * size / 32) for sigma in BLURS]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in ("W", "S", "KB")})
    return out


def _fit_slot(p: np.ndarray, arrays: dict, ratio: np.ndarray) -> tuple[int, np.ndarray, float]:
    """Fit image = c W + S + g KB ratio per channel to the window p [h, w, 3] for every candidate row of
    `arrays`; ratio [h, w, 3] = behind / background. Returns (best row, its albedo c [3], its residual)."""
    w, y, q = arrays["W"], p - arrays["S"], arrays["KB"] * ratio     # [N, h, w, 1], [N, h, w, 3] x2
    sww, swq, sqq = (w * w).sum(axis=(1, 2)), (w * q).sum(axis=(1, 2)), (q * q).sum(axis=(1, 2))  # [N, 3]
    swy, sqy = (w * y).sum(axis=(1, 2)), (q * y).sum(axis=(1, 2))
    det = sww * sqq - swq * swq                                       # normal equations of (c, g)
    c, g = (sqq * swy - swq * sqy) / det, (sww * sqy - swq * swy) / det  # [N, 3] each, Cramer's rule
    residual = ((y - c[:, None, None, :] * w - g[:, None, None, :] * q) ** 2).sum(axis=(1, 2, 3))  # [N]
    best = int(residual.argmin())
    return best, c[best], float(residual[best])


def _search_variants(p: np.ndarray, arrays: dict, ratio: np.ndarray, k: int) -> tuple[int, np.ndarray, float]:
    """Coarse to fine over the variants: the best variant (move, blur) of candidate k, then the best candidate
    drawn that way; twice. Returns (candidate, albedo, residual) as _fit_slot."""
    n = len(CANDIDATES)
    for _ in range(2):
        v, _, _ = _fit_slot(p, {key: a[k::n] for key, a in arrays.items()}, ratio)       # [V] rows of k
        k, c, residual = _fit_slot(p, {key: a[v * n:(v + 1) * n] for key, a in arrays.items()}, ratio)
    return k, c, residual


def _to_analysis(image: torch.Tensor, analysis_size: int) -> np.ndarray:
    if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
        raise ValueError(f"image has shape {tuple(image.shape)}; expected a square [3, H, H] with values in [0, 1]")
    img = image.detach().cpu().permute(1, 2, 0).numpy().astype(np.float64)   # [H, W, 3]
    if img.min() < -0.01 or img.max() > 1.01:
        raise ValueError(f"image values span [{img.min():.2f}, {img.max():.2f}]; expected [0, 1] "
                         "(map diffusion samples in [-1, 1] with (x + 1) / 2 and clamp)")
    size = img.shape[0]
    if size < 8:
        raise ValueError(f"image is {size} px; the scorer needs >= 8 px (scenes render at >= 8)")
    if size <= analysis_size:
        return img
    if size % analysis_size == 0:                                     # the renderer's box filter, exactly
        f = size // analysis_size
        return img.reshape(analysis_size, f, analysis_size, f, 3).mean(axis=(1, 3))
    return _box_downsample(img, analysis_size)


def detect_objects(image: torch.Tensor, analysis_size: int = ANALYSIS_SIZE) -> list[dict]:
    """The objects in one [3, H, H] image in [0, 1], left to right (see the module docstring).

    Returns one dict per occupied slot: color, shape, size, material, position (vocabulary words), slot
    (0, 1, 2), albedo (fitted c, RGB), explained and residual (mean squared values, as in the thresholds)."""
    img = _to_analysis(image, analysis_size)
    size = img.shape[0]
    background, models = _slot_models(size)
    fits = [None] * len(models)
    for round_ in range(2):  # round 1: each slot in the empty room; round 2: beside the other slots' objects
        for j, m in enumerate(models):
            win = (m["rows"], m["cols"])
            behind = background[win]                                  # [h, w, 3]
            others = [(models[i], f) for i, f in enumerate(fits) if i != j and f is not None and f["present"]]
            for mi, f in others:                                      # their shadows, then the objects
                behind = behind * mi["shadow"][f["k"]][win][..., None]
            for mi, f in others:
                k = f["k"]
                behind = (mi["albedo_weight"][k][win][..., None] * f["c"] + mi["highlight"][k][win]
                          + (1 - mi["coverage"][k][win][..., None]) * behind)
            p, ratio = img[win], behind / background[win]
            g = (p * behind).sum(axis=(0, 1)) / (behind * behind).sum(axis=(0, 1))   # empty slot: p = g behind
            e_empty = ((p - g * behind) ** 2).sum()
            k, c, residual = _fit_slot(p, m["fit"], ratio)
            if round_ == 1 and min(residual, e_empty) / p.size > EXACT:  # not a clean render: try variants
                k, c, residual = _search_variants(p, _variants(size)[j], ratio, k)
            explained = (e_empty - residual) / (3 * m["area"][k])
            present = (explained >= MIN_EXPLAINED and residual / p.size <= MAX_RESIDUAL
                       and c.max() - c.min() >= MIN_CHROMA)
            fits[j] = {"k": k, "c": c, "present": present, "explained": explained, "residual": residual / p.size}
    found = []
    for j, f in enumerate(fits):
        if not f["present"]:
            continue
        diff = np.abs(_hue(f["c"][None])[0] - PALETTE_HUES)
        shape, size_word, material = CANDIDATES[f["k"]]
        found.append({"color": list(COLORS)[int(np.minimum(diff, 360 - diff).argmin())], "shape": shape,
                      "size": size_word, "material": material, "position": POSITIONS[j], "slot": j,
                      "albedo": tuple(float(v) for v in f["c"]), "explained": float(f["explained"]),
                      "residual": float(f["residual"])})
    return found


def _relation_holds(matches: list[dict | None], relation: str) -> bool:
    if None in matches:
        return False
    slots = [m["slot"] for m in matches]
    step = 1 if relation == "left of" else -1                          # "left of": slots increase along objects
    return all((b - a) * step > 0 for a, b in zip(slots, slots[1:]))


def match_scene(detections: list[dict], spec: SceneSpec) -> dict:
    """Pair spec objects with detections and judge them.

    Returns {"matches": [detection or None per object], "objects": [{attribute: bool} per object],
    "relation": bool or None (one-object spec), "count": bool, "all_correct": bool}."""
    objs = spec.objects
    best, best_score = [None] * len(objs), -1
    slots = [*range(len(detections)), *[None] * len(objs)]           # an object may stay unmatched
    for perm in itertools.permutations(slots, len(objs)):
        score = sum(j is not None and detections[j][a] == getattr(o, a) for o, j in zip(objs, perm) for a in ATTRIBUTES)
        if score > best_score:
            best, best_score = [None if j is None else detections[j] for j in perm], score
    judged = [{a: m is not None and m[a] == getattr(o, a) for a in ATTRIBUTES} for o, m in zip(objs, best)]
    relation = None if spec.relation is None else _relation_holds(best, spec.relation)
    count = len(detections) == len(objs)
    all_correct = count and all(all(j.values()) for j in judged) and relation is not False
    return {"matches": best, "objects": judged, "relation": relation, "count": count, "all_correct": all_correct}


def score_alignment(images, specs: list[SceneSpec], **detect_kwargs) -> dict[str, float]:
    """Per-attribute accuracy of `images` ([N, 3, H, H] or a list of [3, H, H], in [0, 1]) against specs.

    Keys (as shapes_scoring.score_alignment, plus material): color, shape, size, material, position (over
    objects), relation (over specs with two or three objects; NaN if none), count and all_correct (over
    images), n (images), n_objects, n_relations. `detect_kwargs` go to detect_objects."""
    check_images_and_specs(images, specs)
    return alignment_summary([match_scene(detect_objects(image, **detect_kwargs), spec)
                              for image, spec in zip(images, specs)], ATTRIBUTES)
