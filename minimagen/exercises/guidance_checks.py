"""Checkers for exercises 3 and 4: classifier-free guidance, static and dynamic thresholding.

As in `diffusion_checks.py`: fixed-seed float64 cases, expected outputs from the library, and the typical
mistakes as wrong variants (the output a student making that one mistake gets), each next to its diagnosis.

    check_guidance(fn)           fn(pred_cond, pred_uncond, w) -> guided prediction       classifier_free_guidance
    check_static_threshold(fn)   fn(x0) -> x0 clipped to [-1, 1]                          static_threshold
    check_dynamic_threshold(fn)  fn(x0, p) -> x0 rescaled per image                       dynamic_threshold

The percentile of dynamic thresholding is the one PyTorch's quantile and numpy's percentile compute by default:
linear interpolation between the two sorted values around position p (n - 1), counted from 0.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..diffusion import apply_thresholding, classifier_free_guidance, dynamic_threshold, static_threshold
from .grading import F64, Case, CheckResult, extra_dims_hint, images64, randn64, rng, run_check

# ------------------------------------------------------------------------- 3. classifier-free guidance
SWAPPED = ("pred_cond and pred_uncond are swapped (the same as giving w to the unconditional prediction and 1 - w to "
           "the conditional one): at w = 0 you must get pred_uncond back, at w = 1 pred_cond, and large w must move "
           "*towards* the caption")
FROM_COND = ("you extrapolated from the conditional prediction, pred_cond + w (pred_cond - pred_uncond) (Ho & "
             "Salimans' convention, where w = 0 means no guidance); Imagen's formula starts from the unconditional "
             "one, pred_uncond + w (pred_cond - pred_uncond), so that w = 1 means no guidance")
W_MINUS_ONE = ("you used w - 1 as the weight of the difference (converting to Ho & Salimans' convention, but "
               "starting from the unconditional prediction): here w is Imagen's weight itself, and w = 1 must give "
               "pred_cond")
NO_DIFFERENCE = "the guidance term must be w times the *difference* (pred_cond - pred_uncond), not w times pred_cond"
BRACKETS = ("brackets are missing around the difference: w multiplied only pred_cond, and pred_uncond was added and "
            "subtracted again; w must multiply the whole difference (pred_cond - pred_uncond)")
W_ON_UNCOND = ("w multiplies the wrong term: it scales pred_uncond, but it must scale the difference "
               "(pred_cond - pred_uncond) that is added to pred_uncond")
GUIDANCE_SIGN = ("the difference was subtracted: guidance moves from pred_uncond *towards* pred_cond, "
                 "pred_uncond + w (pred_cond - pred_uncond)")
NO_BASE = "you returned only w times the difference: the guided prediction starts from pred_uncond"


def check_guidance(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(pred_cond, pred_uncond, w) -> pred_uncond + w (pred_cond - pred_uncond)."""
    g = rng(3)
    cases = []
    for name, w, batch, hint in [
            ("a batch of 4 at w = 5", 5.0, 4, ""),
            ("w = 1: no guidance", 1.0, 2, "At w = 1 the result must be pred_cond exactly (no guidance)."),
            ("w = 0: unconditional", 0.0, 2, "At w = 0 the result must be pred_uncond exactly."),
            ("a batch of 1 at w = 7.5", 7.5, 1, ""),
            ("a batch of 3 at w = 2", 2.0, 3, "")]:
        cond, uncond = randn64(g, batch, 3, 8, 8), randn64(g, batch, 3, 8, 8)
        cases.append(Case(name, (cond, uncond, w), classifier_free_guidance(cond, uncond, w), hint))

    def mistakes(c, u, w):
        return [(SWAPPED, c + w * (u - c)), (FROM_COND, c + w * (c - u)), (W_MINUS_ONE, u + (w - 1) * (c - u)),
                (NO_DIFFERENCE, u + w * c), (BRACKETS, w * c), (W_ON_UNCOND, w * u + (c - u)),
                (GUIDANCE_SIGN, u - w * (c - u)), (NO_BASE, w * (c - u))]

    return run_check("guidance", fn, cases, mistakes, library={"classifier_free_guidance": classifier_free_guidance},
                     verbose=verbose)


# ---------------------------------------------------------------------------------------- 4. thresholding
NOT_CLIPPED = "values outside [-1, 1] were not clipped: static thresholding clips x0 to [-1, 1]"
CLIPPED_01 = "you clipped to [0, 1]: diffusion works on images in [-1, 1], so x0 must be clipped to [-1, 1]"
TO_DISPLAY = "you clipped and then mapped to [0, 1] (the display range); thresholding must stay in [-1, 1]"
RESCALED = "you rescaled by the largest value instead of clipping: static thresholding clips to [-1, 1]"
RESCALED_PER_IMAGE = ("you divided each image by its largest |value| instead of clipping: static thresholding leaves "
                      "every value inside [-1, 1] unchanged and sets the others to -1 or 1")
ONLY_UPPER = ("only values above 1 were clipped: values below -1 must be raised to -1 too (clip on both sides); "
              "in a picture the dark and saturated colours then overshoot")
ONLY_LOWER = "only values below -1 were clipped: values above 1 must be lowered to 1 too (clip on both sides)"
BOUNDS_SWAPPED = ("every value came out as the same constant, -1 or 1: the lower and upper bounds are swapped (the "
                  "larger of x0 and 1 was taken where the smaller is needed, or the other way round)")
SIGN_LOST = "the sign was lost: you clipped |x0| instead of x0; negative values must stay negative"
SQUASHED = ("you squashed the values with a smooth function (such as tanh): static thresholding leaves values "
            "inside [-1, 1] unchanged and clips only the others")


def check_static_threshold(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x0) -> x0 clipped to [-1, 1]."""
    g = rng(4)
    inputs = [("a batch of 4 with values up to about 6", 2 * randn64(g, 4, 3, 8, 8)),
              ("values already inside [-1, 1] (nothing may change)", images64(g, 2)),
              ("a batch of 1 with values up to about 100", 30 * randn64(g, 1, 3, 8, 8)),
              ("exactly -1, 0 and 1 (the borders stay)", torch.tensor([-1.0, 0.0, 1.0], dtype=F64).repeat(2, 3, 1, 1))]
    cases = [Case(name, (x,), static_threshold(x)) for name, x in inputs]

    def mistakes(x):
        per_image_max = x.abs().amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return [(NOT_CLIPPED, x), (CLIPPED_01, x.clamp(0, 1)), (TO_DISPLAY, (static_threshold(x) + 1) / 2),
                (RESCALED, x / x.abs().max()), (RESCALED_PER_IMAGE, x / per_image_max),
                (ONLY_UPPER, x.clamp(max=1)), (ONLY_LOWER, x.clamp(min=-1)),
                (BOUNDS_SWAPPED, torch.full_like(x, -1.0)), (BOUNDS_SWAPPED, torch.full_like(x, 1.0)),
                (SIGN_LOST, x.abs().clamp(max=1)), (SQUASHED, torch.tanh(x))]

    return run_check("static_threshold", fn, cases, mistakes,
                     library={"static_threshold": static_threshold, "apply_thresholding": apply_thresholding},
                     verbose=verbose)


S_NOT_CLAMPED = ("s was not clamped at 1: an image already inside [-1, 1] (percentile s < 1) got stretched; "
                 "use s = max(1, percentile) so such images stay unchanged")
MIN_NOT_MAX = ("s = min(1, percentile) instead of max(1, percentile): s must never be *below* 1 (images inside "
               "[-1, 1] stay unchanged) and may grow above 1 (over-saturated images are squeezed back)")
WHOLE_BATCH = ("the percentile was taken over the whole batch: compute one s per image, over that image's "
               "C*H*W values, so one saturated image does not rescale the others")
PER_CHANNEL = ("you computed one s per channel of each image: s is one number per image, the percentile over "
               "all C*H*W values of that image (per-channel scaling shifts the colours)")
NOT_CLIPPED_DYN = ("you divided by s without clipping to [-s, s] first: the values beyond the percentile end up "
                   "outside [-1, 1]")
NOT_DIVIDED_DYN = "you clipped to [-s, s] but did not divide by s: the result must lie in [-1, 1]"
ONE_SIDED_DYN = ("you clipped only one side: values below -s must be raised to -s as well as values above s lowered "
                 "to s, before dividing by s")
SIGNED_PERCENTILE = "the percentile must be taken of the absolute values |x0|, not of x0 itself"
SIGN_LOST_DYN = "the sign was lost: you clipped |x0| instead of x0; only the percentile is taken of |x0|"
STATIC_NOT_DYNAMIC = ("that is static thresholding (clipping to [-1, 1]); dynamic thresholding clips to [-s, s] "
                      "and divides by s")
LARGEST_NOT_PERCENTILE = ("s is the largest |value| of each image (the 100th percentile) instead of the p-th "
                          "percentile: a few extreme values then darken the whole image")
ONE_MINUS_P = ("you took the (1 - p) percentile: p = dynamic_thresholding_ratio is the fraction of |x0| values "
               "*below* s (0.95: s is near the top of the values)")
NO_INTERPOLATION = ("your percentile is one of the sorted values picked without interpolation (or a different "
                    "definition): this exercise expects the definition of PyTorch's quantile (and numpy's "
                    "percentile) by default, linear interpolation between the two sorted values around position "
                    "p (n - 1), counted from 0, of the n = C*H*W values of |x0|")


def check_dynamic_threshold(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x0, p) -> clip(x0, -s, s) / s per image, s = max(1, p-quantile of |x0|)."""
    g = rng(5)

    def scaled(scales: list) -> Tensor:
        return randn64(g, len(scales), 3, 8, 8) * torch.tensor(scales, dtype=F64).reshape(-1, 1, 1, 1)  # (B, 3, 8, 8)

    inputs = [("a batch of 3 (one inside [-1, 1], two over-saturated), p = 0.95", scaled([0.3, 1.5, 3.0]), 0.95),
              ("a batch of 2 inside [-0.5, 0.5]: s < 1 must become 1, nothing changes", images64(g, 2) / 2, 0.95),
              ("a batch of 1 with values up to about 10, p = 0.9", scaled([4.0]), 0.9),
              ("p = 1.0 (s = the largest |value| of each image)", scaled([2.0, 0.5]), 1.0),
              ("4 images of very different scales, p = 0.99", scaled([0.5, 1.0, 4.0, 20.0]), 0.99),
              ("an image with nearly all values far outside [-1, 1] (scale 50), p = 0.8", scaled([50.0]), 0.8)]
    cases = [Case(name, (x, p), dynamic_threshold(x, p)) for name, x, p in inputs]

    def mistakes(x, p):
        B, C = x.shape[:2]

        def percentile(values: Tensor, q: float = p, interpolation: str = "linear") -> Tensor:
            """(B, n) -> (B, 1, 1, 1): the q-quantile of each row."""
            return torch.quantile(values, q, dim=1, interpolation=interpolation).reshape(-1, 1, 1, 1)

        def squeeze(s: Tensor, y: Tensor = x) -> Tensor:  # clip(y, -s, s) / s
            return torch.maximum(torch.minimum(y, s), -s) / s

        flat = x.abs().reshape(B, -1)  # (B, C*H*W)
        q = percentile(flat)
        s = q.clamp(min=1)
        q_signed = percentile(x.reshape(B, -1)).clamp(min=1)
        per_channel = torch.quantile(x.abs().reshape(B, C, -1), p, dim=2).clamp(min=1)[..., None, None]  # (B, C, 1, 1)
        sorted_flat = flat.sort(dim=1).values  # (B, n)
        n = flat.shape[1]
        # sorted values picked by index: [p n], p n rounded, and the ceil(p n)-th smallest (counted from 1)
        by_index = [min(max(k, 0), n - 1) for k in (int(p * n), round(p * n), math.ceil(p * n) - 1)]
        wrong = [(STATIC_NOT_DYNAMIC, static_threshold(x)),
                 (S_NOT_CLAMPED, squeeze(q)), (MIN_NOT_MAX, squeeze(q.clamp(max=1))),
                 (WHOLE_BATCH, dynamic_threshold(x.reshape(1, -1), p).reshape(x.shape)),  # the batch as one image
                 (PER_CHANNEL, squeeze(per_channel)),
                 (NOT_CLIPPED_DYN, x / s), (NOT_DIVIDED_DYN, torch.maximum(torch.minimum(x, s), -s)),
                 (ONE_SIDED_DYN, torch.minimum(x, s) / s), (ONE_SIDED_DYN, torch.maximum(x, -s) / s),
                 (SIGNED_PERCENTILE, squeeze(q_signed)), (SIGN_LOST_DYN, squeeze(s, x.abs())),
                 (LARGEST_NOT_PERCENTILE, squeeze(flat.amax(dim=1).reshape(-1, 1, 1, 1).clamp(min=1))),
                 (ONE_MINUS_P, squeeze(percentile(flat, 1 - p).clamp(min=1))),
                 *[(NO_INTERPOLATION, squeeze(percentile(flat, interpolation=kind).clamp(min=1)))
                   for kind in ("lower", "higher", "nearest", "midpoint")],
                 *[(NO_INTERPOLATION, squeeze(sorted_flat[:, k].reshape(-1, 1, 1, 1).clamp(min=1))) for k in by_index]]
        return wrong

    return run_check("dynamic_threshold", fn, cases, mistakes, shape_hint=extra_dims_hint,
                     library={"dynamic_threshold": dynamic_threshold, "apply_thresholding": apply_thresholding},
                     verbose=verbose)
