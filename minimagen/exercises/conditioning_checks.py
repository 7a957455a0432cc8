"""Checkers for the conditioning exercises: the super-resolution stage's low-res input, masked mean pooling.

As in `diffusion_checks.py`: fixed-seed float64 cases, expected outputs from the library, known mistakes as
wrong variants built from library pieces.

    check_lowres_condition(fn)  fn(lowres, target_size, noise_level, noise) -> c_aug   prepare_lowres_condition
    check_masked_mean(fn)       fn(text_embeds, text_mask) -> (B, D)                   text_encoder.masked_mean

lowres is (B, 3, h, w) in [0, 1]; noise_level a LongTensor (B,) of indices into the 1000-step cosine
augmentation schedule; text_embeds (B, L, D) and text_mask (B, L) bool, True on real tokens.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..conditioning import augmentation_schedule, prepare_lowres_condition, upsample
from ..diffusion import NoiseSchedule, q_sample
from ..text_encoder import masked_mean
from .grading import F64, Case, CheckResult, one_value_for_all, randn64, rng, run_check

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
        nearest = F.interpolate(lowres, size=(size, size), mode="nearest")
        std = (level.to(F64) / 1000).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return [(NOISED_FIRST, q_sample(up, level, noise, aug) * 2 - 1),
                (NOT_NORMALISED, q_sample(up, level, noise, aug)),
                (NO_AUG_NOISE, up * 2 - 1),
                (LINEAR_AUG, q_sample(up * 2 - 1, level, noise, NoiseSchedule(1000, "linear").alphas_cumprod)),
                (LEVEL_AS_STD, up * 2 - 1 + std * noise),
                (OTHER_RESIZE, prepare_lowres_condition(nearest, size, level, noise=noise)),
                *one_value_for_all(level, lambda v: prepare_lowres_condition(lowres, size, v, noise=noise),
                                   "noise_level")]

    def shape_hint(case: Case, got: tuple) -> str:
        return NOT_UPSAMPLED if got[-2:] == tuple(case.args[0].shape[-2:]) else ""

    return run_check("lowres_condition", fn, cases, mistakes, shape_hint=shape_hint, verbose=verbose)


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
        return [(PADDING_COUNTED, embeds.mean(dim=1)), (FULL_LENGTH, total / mask.shape[1]),
                (EMPTY_NAN, total / count), (SUMMED, total), (FIRST_N, first_n)]

    def shape_hint(case: Case, got: tuple) -> str:
        if got == tuple(case.args[1].shape):
            return "you averaged over the embedding dimension D (the last one) instead of over the tokens (dim 1)"
        return ""

    return run_check("masked_mean", fn, cases, mistakes, shape_hint=shape_hint, verbose=verbose,
                     broadcast_hint="the mask (B, L) must become (B, L, 1) to multiply embeddings of shape (B, L, D)")
