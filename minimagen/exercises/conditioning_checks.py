"""Checkers for the conditioning exercises: the super-resolution stage's low-res input, masked mean pooling.

As in `diffusion_checks.py`: fixed-seed float64 cases, expected outputs from the library, and the typical
mistakes as wrong variants (the output a student making that one mistake gets), each next to its diagnosis.

    check_lowres_condition(fn)  fn(lowres, target_size, noise_level, noise) -> c_aug   prepare_lowres_condition
    check_masked_mean(fn)       fn(text_embeds, text_mask) -> (B, D)                   text_encoder.masked_mean

lowres is (B, 3, h, w) in [0, 1]; noise_level a LongTensor (B,) of indices into the 1000-step cosine
augmentation schedule; text_embeds (B, L, D) and text_mask (B, L) bool, True on real tokens.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..conditioning import augmentation_schedule, downsample, prepare_lowres_condition, upsample
from ..diffusion import NoiseSchedule, q_sample
from ..text_encoder import masked_mean
from .grading import F64, Case, CheckResult, noise_probes, one_value_for_all, randn64, rng, run_check

# ------------------------------------------------------------------ 5. the super-resolution condition
NOISED_FIRST = ("you added the noise before normalising to [-1, 1]: resize, normalise (2 * image - 1), *then* "
                "noise; an existing Imagen port did it in different orders at training and sampling time")
NOT_NORMALISED = "the low-res image was never mapped from [0, 1] to [-1, 1] (c = 2 * image - 1) before the noise"
LINEAR_AUG = ("noise_level indexes the fixed 1000-step *cosine* augmentation schedule (augmentation_schedule()); "
              "you used a linear schedule")
LEVEL_AS_STD = ("noise_level is not a noise standard deviation in thousandths: it is an index n into the "
                "augmentation schedule, c_aug = sqrt(alpha_bar_n) c + sqrt(1 - alpha_bar_n) noise")
NO_AUG_NOISE = "your condition has no noise at all: noise it at noise_level with the augmentation schedule"
OTHER_RESIZE = ("the image was resized with another interpolation than minimagen.conditioning.upsample "
                "(bilinear); training and sampling must resize the same way")
NOT_UPSAMPLED = "the condition was not upsampled: it must be target_size x target_size, like the images of this stage"
NOISED_BEFORE_RESIZE = ("you noised the low-res image and then resized it (the noise shrunk to the low resolution): "
                        "resize first, then normalise, then noise, so that every pixel of the condition gets its own "
                        "noise value, as `noise` (drawn at the target size) provides")
CLIPPED_CONDITION = ("you clipped the noisy condition to [-1, 1]: the augmentation noise must stay as it is (the "
                     "stage was trained on unclipped noisy conditions, and clipping biases their mean)")
HALF_RANGE = ("the image was mapped to [-0.5, 0.5] (0.5 subtracted but not doubled): the condition lives in "
              "[-1, 1], c = 2 * image - 1")
MINUS_TWO = ("the image was mapped to [-2, 0] (1 subtracted before doubling: brackets in the wrong place): "
             "c = 2 * image - 1")
INVERSE_MAP = ("you applied the inverse mapping, (image + 1) / 2, which takes [-1, 1] to [0, 1]; the low-res "
               "image is in [0, 1] and must go to [-1, 1], c = 2 * image - 1")
LEVEL_MINUS_ONE = ("the augmentation schedule was indexed at noise_level - 1: alpha_bar[noise_level] already "
                   "belongs to the level, and at level 0 the index -1 wraps round to the *last* entry (almost "
                   "pure noise instead of none)")
SQRT_OUTSIDE_AUG = ("the square root is in the wrong place: the noise coefficient is sqrt(1 - alpha_bar_n), not "
                    "1 - sqrt(alpha_bar_n)")
RESIZE_FIRST_HINT = ("`noise` has the target size (B, 3, target_size, target_size): upsample the low-res image "
                     "first, then normalise and noise it; and a per-image noise_level of shape (B,) must be "
                     "reshaped to (B, 1, 1, 1)")


def check_lowres_condition(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(lowres in [0, 1], target_size, noise_level (B,), noise) -> q_sample(2 upsample(lowres) - 1, level)."""
    g = rng(6)
    cases = []
    for name, batch, low, high, levels in [
            ("a batch of 2, 8 -> 16 px, noise_level 100", 2, 8, 16, [100, 100]),
            ("noise_level 0 (almost no noise)", 2, 8, 16, [0, 0]),
            ("noise_level 999 (almost pure noise)", 2, 8, 16, [999, 999]),
            ("mixed per-image levels [0, 250, 500]", 3, 8, 16, [0, 250, 500]),
            ("a batch of 1, 4 -> 32 px, noise_level 250", 1, 4, 32, [250]),
            ("already at the target size, 16 -> 16 px, noise_level 250", 2, 16, 16, [250, 250])]:
        lowres = torch.rand((batch, 3, low, low), generator=g, dtype=F64)  # (B, 3, low, low) in [0, 1]
        level, noise = torch.tensor(levels), randn64(g, batch, 3, high, high)
        expected = prepare_lowres_condition(lowres, high, level, noise=noise)
        cases.append(Case(name, (lowres, high, level, noise), expected))

    def mistakes(lowres, size, level, noise):
        up, aug = upsample(lowres, size), augmentation_schedule().alphas_cumprod
        c = up * 2 - 1  # the right condition before its noise
        a = aug[level].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1) alpha_bar_n
        a_before = aug[level - 1].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1), the index -1 wrapping as in a student's code
        resized = {mode: F.interpolate(lowres, size=(size, size), mode=mode, align_corners=corners)
                   for mode, corners in (("nearest", None), ("bicubic", False))}
        resized["bilinear, corners aligned"] = F.interpolate(lowres, size=(size, size), mode="bilinear",
                                                             align_corners=True)
        small = lowres.shape[-1]
        std = (level.to(F64) / 1000).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return [(NOISED_FIRST, q_sample(up, level, noise, aug) * 2 - 1),
                (NOT_NORMALISED, q_sample(up, level, noise, aug)),
                (NO_AUG_NOISE, c),
                (LINEAR_AUG, q_sample(c, level, noise, NoiseSchedule(1000, "linear").alphas_cumprod)),
                (LEVEL_AS_STD, c + std * noise),
                (LEVEL_MINUS_ONE, a_before.sqrt() * c + (1 - a_before).sqrt() * noise),
                (SQRT_OUTSIDE_AUG, a.sqrt() * c + (1 - a.sqrt()) * noise),
                (CLIPPED_CONDITION, q_sample(c, level, noise, aug).clamp(-1, 1)),
                (HALF_RANGE, q_sample(up - 0.5, level, noise, aug)),
                (MINUS_TWO, q_sample(2 * (up - 1), level, noise, aug)),
                (INVERSE_MAP, q_sample((up + 1) / 2, level, noise, aug)),
                *[(OTHER_RESIZE, q_sample(r * 2 - 1, level, noise, aug)) for r in resized.values()],
                *[(NOISED_BEFORE_RESIZE, upsample(q_sample(lowres * 2 - 1, level, shrink(noise, small), aug), size))
                  for shrink in (downsample, lambda z, k: F.interpolate(z, size=(k, k), mode="nearest"))],
                *one_value_for_all(level, lambda v: prepare_lowres_condition(lowres, size, v, noise=noise),
                                   "noise_level")]

    def shape_hint(case: Case, got: tuple) -> str:
        return NOT_UPSAMPLED if got[-2:] == tuple(case.args[0].shape[-2:]) else ""

    probe_args = cases[0].args[:2] + (torch.tensor([250, 250]),) + cases[0].args[3:]  # noise_level 250: noise matters
    return run_check("lowres_condition", fn, cases, mistakes,
                     probes=noise_probes("a batch of 2, 8 -> 16 px, noise_level 250", probe_args, 3, ignored=False),
                     shape_hint=shape_hint, broadcast_hint=RESIZE_FIRST_HINT,
                     library={"prepare_lowres_condition": prepare_lowres_condition}, verbose=verbose)


# ----------------------------------------------------------------------------------- 6. masked mean
PADDING_COUNTED = ("padding tokens were averaged in: only the positions where text_mask is True may count (padded "
                   "rows can hold any value)")
FULL_LENGTH = ("you summed the real tokens but divided by the full length L: divide by the number of real tokens "
               "of each caption")
EMPTY_NAN = ("a caption with no real token gave 0 / 0 = NaN: by minimagen's convention its mean is the zero vector "
             "(divide by the count, but by at least 1)")
SUMMED = "you summed the real tokens but did not divide by their number"
FIRST_N = ("you averaged the first n positions (n = number of real tokens): use the mask itself, real tokens need "
           "not come first")
MASK_INVERTED = ("you averaged the padding positions: text_mask is True on the *real* tokens, False on padding")
COUNT_PLUS_ONE = ("you divided by the number of real tokens + 1 (to avoid 0 / 0): that makes every mean too small; "
                  "divide by the number of real tokens, but by at least 1")
BATCH_COUNT = ("you divided by the number of real tokens of the whole batch: each caption's sum is divided by its "
               "own number of real tokens")
WHOLE_BATCH_MEAN = ("you averaged the real tokens of all captions together into one vector: the result has one "
                    "mean per caption, shape (B, D)")


def check_masked_mean(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(text_embeds (B, L, D), text_mask (B, L) bool) -> (B, D) mean of the real tokens; empty rows -> 0."""
    g = rng(7)

    def case(name: str, mask_rows: list, zero_padding: bool = False) -> Case:
        mask = torch.tensor(mask_rows, dtype=torch.bool)  # (B, L)
        embeds = randn64(g, *mask.shape, 6)  # (B, L, D = 6)
        padding = torch.zeros_like(embeds) if zero_padding else 3 * randn64(g, *embeds.shape) + 2
        embeds = torch.where(mask[..., None], embeds, padding)  # padded rows: junk (or 0, as TextEncoder gives)
        return Case(name, (embeds, mask), masked_mean(embeds, mask))

    cases = [case("3 captions of 5, 2 and 7 tokens (L = 7), padding rows hold non-zero values",
                  [[1] * 5 + [0] * 2, [1] * 2 + [0] * 5, [1] * 7]),
             case("every token real (no padding)", [[1] * 4, [1] * 4]),
             case("one real token per caption", [[1, 0, 0, 0], [1, 0, 0, 0]]),
             case("a caption with no real token (its mean is the zero vector by convention)", [[1, 1, 0], [0, 0, 0]]),
             case("a batch of 1", [[1, 1, 1, 0, 0]]),
             case("padding in the middle of the mask", [[1, 0, 1, 1, 0], [0, 1, 1, 0, 1]]),
             case("padded rows exactly 0 (as TextEncoder.encode returns them)", [[1, 1, 0, 0], [1, 1, 1, 0]], True)]

    def mistakes(embeds, mask):
        w = mask.to(F64)[..., None]  # (B, L, 1)
        total, count = (embeds * w).sum(dim=1), w.sum(dim=1)  # (B, D), (B, 1)
        n = mask.sum(dim=1).tolist()
        first_n = torch.stack([embeds[b, :max(k, 1)].mean(dim=0) for b, k in enumerate(n)])  # (B, D)
        padding = 1 - w  # (B, L, 1)
        return [(PADDING_COUNTED, embeds.mean(dim=1)), (FULL_LENGTH, total / mask.shape[1]),
                (EMPTY_NAN, total / count), (SUMMED, total), (FIRST_N, first_n),
                (MASK_INVERTED, (embeds * padding).sum(dim=1) / padding.sum(dim=1).clamp(min=1)),
                (COUNT_PLUS_ONE, total / (count + 1)), (BATCH_COUNT, total / count.sum().clamp(min=1))]

    def shape_hint(case: Case, got: tuple) -> str:
        if got == tuple(case.args[1].shape):
            return "you averaged over the embedding dimension D (the last one) instead of over the tokens (dim 1)"
        if got == tuple(case.args[0].shape[-1:]):
            return WHOLE_BATCH_MEAN
        return ""

    return run_check("masked_mean", fn, cases, mistakes, shape_hint=shape_hint, verbose=verbose,
                     library={"masked_mean": masked_mean},
                     broadcast_hint="the mask (B, L) must become (B, L, 1) to multiply embeddings of shape (B, L, D)")
