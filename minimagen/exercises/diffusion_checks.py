"""Checkers for the diffusion exercises: forward process, one DDPM step, guidance, thresholding.

Every checker builds its cases from a fixed seed (the same verdict on every run), in float64, computes the
expected outputs with the *library* function (the single source of truth: no second copy of the maths here)
and lists the common mistakes as wrong variants, built from the same library functions with one thing
changed (a coefficient squared, two arguments swapped, one timestep for the whole batch, ...) or, where no
library piece fits, written out in one line next to the diagnosis it stands for.

    check_q_sample(fn)           fn(x0, t, noise, alphas_cumprod) -> x_t                  diffusion.q_sample
    check_predict_x0(fn)         fn(x_t, t, eps, alphas_cumprod) -> x0                    diffusion.x0_from_eps
    check_ddpm_step(fn)          fn(x0, x_t, t, t_prev, alphas_cumprod, noise) -> x_prev  diffusion.ddpm_step
    check_guidance(fn)           fn(pred_cond, pred_uncond, w) -> guided prediction       classifier_free_guidance
    check_static_threshold(fn)   fn(x0) -> x0 clipped to [-1, 1]                          static_threshold
    check_dynamic_threshold(fn)  fn(x0, p) -> x0 rescaled per image                       dynamic_threshold

t and t_prev are LongTensors of shape (B,), one timestep per sample (t_prev = -1: the clean image); images
are (B, 3, H, W); alphas_cumprod is a float64 tensor (T,).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..diffusion import (NoiseSchedule, classifier_free_guidance, ddpm_step, dynamic_threshold,
                         posterior_mean_variance, q_sample, static_threshold, x0_from_eps)
from .grading import (F64, Case, CheckResult, extra_dims_hint, images64, one_value_for_all, randn64, rng,
                      run_check)

# ------------------------------------------------------------------------------ 1. the forward process
SIGNAL_NOT_SQRT = ("the image is scaled by alpha_bar_t instead of sqrt(alpha_bar_t): off by a factor "
                   "sqrt(alpha_bar_t) (alpha_bar_t is the *variance* kept from the signal)")
NOISE_NOT_SQRT = ("the noise is scaled by (1 - alpha_bar_t) instead of sqrt(1 - alpha_bar_t): 1 - alpha_bar_t is "
                  "the noise *variance*, its standard deviation is the square root")
BOTH_NOT_SQRT = ("both coefficients lack their square root: use sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), "
                 "not alpha_bar_t and 1 - alpha_bar_t")
SWAPPED = ("the signal and noise coefficients are swapped: x0 must be multiplied by sqrt(alpha_bar_t) (close to "
           "1 at small t) and the noise by sqrt(1 - alpha_bar_t)")


def _timestep_cases(seed: int, inputs: Callable[[torch.Generator, Tensor, Tensor], tuple],
                    reference: Callable[..., Tensor]) -> list[Case]:
    """The six timestep situations both forward-process checkers use."""
    g, cosine = rng(seed), NoiseSchedule(1000, "cosine").alphas_cumprod
    linear50 = NoiseSchedule(50, "linear").alphas_cumprod
    cases = []
    for name, t, abar in [("a batch of 4 with mixed timesteps t = [10, 250, 600, 900]", [10, 250, 600, 900], cosine),
                          ("t = 0 for every image (almost clean)", [0, 0], cosine),
                          ("t = T-1 = 999 for every image (almost pure noise)", [999, 999, 999], cosine),
                          ("a batch of 1 at t = 500", [500], cosine),
                          ("mixed extremes t = [999, 0, 500]", [999, 0, 500], cosine),
                          ("another schedule: linear with T = 50, t = [49, 3]", [49, 3], linear50)]:
        args = inputs(g, torch.tensor(t), abar)
        cases.append(Case(name, args, reference(*args)))
    return cases


def check_q_sample(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x0, t, noise, alphas_cumprod) -> x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
    def inputs(g, t, abar):
        return images64(g, len(t)), t, randn64(g, len(t), 3, 8, 8), abar

    def mistakes(x0, t, noise, abar):
        zero = torch.zeros_like(x0)
        signal = lambda ab: q_sample(x0, t, zero, ab)  # sqrt(ab_t) x0; with ab = abar^2 it is abar_t x0
        noise_part = lambda ab: q_sample(zero, t, noise, ab)  # sqrt(1 - ab_t) eps; ab = 1 - (1 - abar)^2 -> (1 - abar)
        return [(BOTH_NOT_SQRT, signal(abar**2) + noise_part(1 - (1 - abar) ** 2)),
                (SIGNAL_NOT_SQRT, signal(abar**2) + noise_part(abar)),
                (NOISE_NOT_SQRT, signal(abar) + noise_part(1 - (1 - abar) ** 2)),
                (SWAPPED, q_sample(noise, t, x0, abar)),  # sqrt(abar) eps + sqrt(1 - abar) x0
                *one_value_for_all(t, lambda v: q_sample(x0, v, noise, abar))]

    return run_check("q_sample", fn, _timestep_cases(0, inputs, q_sample), mistakes, shape_hint=extra_dims_hint,
                     verbose=verbose)


NOT_DIVIDED = ("you did not divide by sqrt(alpha_bar_t): your x0 is off by a factor sqrt(alpha_bar_t) "
               "(solve x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for x0)")
MULTIPLIED = "you multiplied by sqrt(alpha_bar_t) where you must divide by it: off by a factor alpha_bar_t"
DIVIDED_BY_ABAR = ("you divided by alpha_bar_t instead of sqrt(alpha_bar_t): off by a factor "
                   "1 / sqrt(alpha_bar_t)")
SIGN = "the noise was added instead of subtracted: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)"


def check_predict_x0(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x_t, t, eps, alphas_cumprod) -> x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    def inputs(g, t, abar):
        x0, eps = images64(g, len(t)), randn64(g, len(t), 3, 8, 8)
        return q_sample(x0, t, eps, abar), t, eps, abar

    def mistakes(x_t, t, eps, abar):
        zero = torch.zeros_like(x_t)
        right = x0_from_eps(x_t, t, eps, abar)
        times_sqrt = lambda x: q_sample(x, t, zero, abar)  # sqrt(abar_t) x
        return [(NOT_DIVIDED, times_sqrt(right)),
                (MULTIPLIED, times_sqrt(times_sqrt(right))),
                (DIVIDED_BY_ABAR, x0_from_eps(right, t, zero, abar)),  # right / sqrt(abar_t)
                (NOISE_NOT_SQRT, x0_from_eps(x_t, t, q_sample(zero, t, eps, abar), abar)),  # eps -> sqrt(1-abar) eps
                (SIGN, x0_from_eps(x_t, t, -eps, abar)),
                *one_value_for_all(t, lambda v: x0_from_eps(x_t, v, eps, abar))]

    return run_check("predict_x0", fn, _timestep_cases(1, inputs, x0_from_eps), mistakes, shape_hint=extra_dims_hint,
                     verbose=verbose)


# ------------------------------------------------------------------------------------ 2. one DDPM step
NOISE_AT_LAST_STEP = ("noise was added at the last step (t_prev = -1): the final image must be the posterior mean "
                      "(= x0 there) without noise; the posterior variance beta_tilde is exactly 0 at t_prev = -1")
NO_NOISE = ("your step ignores `noise`: every step except the last must add sqrt(beta_tilde) * noise, otherwise "
            "DDPM sampling is deterministic and its images come out smooth and washed out")
VARIANCE_NOT_STD = ("the noise is scaled by the variance beta_tilde instead of the standard deviation "
                    "sqrt(beta_tilde)")
FIXED_LARGE = ("the noise is scaled by sqrt(beta') with beta' = 1 - alpha_bar_t / alpha_bar_prev (DDPM's other, "
               "'fixed large' choice); this exercise uses the posterior variance "
               "beta_tilde = beta' (1 - alpha_bar_prev) / (1 - alpha_bar_t)")
MEAN_SWAPPED = "the coefficients of x0 and x_t in the posterior mean are swapped"
ONE_STEP_ONLY = ("your step lands on t - 1 instead of t_prev: samplers skip steps (e.g. 999 -> 749), so use "
                 "alpha_bar at t_prev (alpha_bar_prev), not the single-step alpha_t")


def _abar_with_clean(abar: Tensor, t: Tensor) -> Tensor:
    """alpha_bar[t] as (B, 1, 1, 1), with alpha_bar[-1] = 1 (the clean image)."""
    padded = torch.cat([torch.ones(1, dtype=abar.dtype), abar])  # (T+1,) index 0 is t = -1
    return padded[t + 1].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)


def check_ddpm_step(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x0, x_t, t, t_prev, alphas_cumprod, noise) -> x_{t_prev} ~ q(x_{t_prev} | x_t, x0), noise given."""
    abar = NoiseSchedule(1000, "cosine").alphas_cumprod
    g = rng(2)

    def step_case(name: str, t: list, t_prev: list, seed: int, schedule: Tensor = abar) -> Case:
        t, t_prev = torch.tensor(t), torch.tensor(t_prev)
        x0, eps = images64(g, len(t)), randn64(g, len(t), 3, 8, 8)
        x_t = q_sample(x0, t, eps, schedule)
        x0_pred = (x0 + 0.3 * randn64(g, *x0.shape)).clamp(-1, 1)  # a model's imperfect guess of x0
        noise = randn64(rng(seed), *x_t.shape)  # the draw ddpm_step makes from a generator seeded `seed`
        expected = ddpm_step(x0_pred, x_t, t, t_prev, schedule, generator=rng(seed))
        return Case(name, (x0_pred, x_t, t, t_prev, schedule, noise), expected)

    cases = [step_case("a batch of 4 jumping t = 999 -> t_prev = 749", [999] * 4, [749] * 4, 10),
             step_case("one small step t = 500 -> t_prev = 499", [500, 500], [499, 499], 11),
             step_case("the last step t = 50 -> t_prev = -1 (the clean image)", [50, 50], [-1, -1], 12),
             step_case("mixed per-sample steps t = [999, 500, 10] -> t_prev = [749, 250, -1]",
                       [999, 500, 10], [749, 250, -1], 13),
             step_case("a batch of 1, t = 1 -> t_prev = 0", [1], [0], 14),
             step_case("another schedule: linear with T = 50, t = [49, 30] -> t_prev = [24, 5]", [49, 30], [24, 5], 15,
                       NoiseSchedule(50, "linear").alphas_cumprod)]

    def same_with_two_noises(call, name, t, t_prev) -> bool | None:
        """Does the step give the same output for two different noises? None: outputs not comparable (wrong
        type, shape or NaN), left for the cases below to explain."""
        x0, x_t = cases[0].args[0][:2], cases[0].args[1][:2]
        t, t_prev = torch.tensor([t, t]), torch.tensor([t_prev, t_prev])
        a = call(name, x0, x_t, t, t_prev, abar, randn64(rng(20), *x_t.shape))
        b = call(name, x0, x_t, t, t_prev, abar, randn64(rng(21), *x_t.shape))
        if not all(isinstance(y, Tensor) and y.shape == x_t.shape and torch.isfinite(y).all() for y in (a, b)):
            return None
        return torch.allclose(a, b)

    def last_step_is_noise_free(call):
        name = "the last step t = 0 -> t_prev = -1, called with two different noises"
        return (name, NOISE_AT_LAST_STEP) if same_with_two_noises(call, name, 0, -1) is False else None

    def middle_step_uses_noise(call):
        name = "a middle step t = 500 -> t_prev = 250, called with two different noises"
        return (name, NO_NOISE) if same_with_two_noises(call, name, 500, 250) is True else None

    def mistakes(x0, x_t, t, t_prev, schedule, noise):
        mean, variance = posterior_mean_variance(x0, x_t, t, t_prev, schedule)
        beta = 1 - _abar_with_clean(schedule, t) / _abar_with_clean(schedule, t_prev)  # beta' of the jump
        swapped_mean, _ = posterior_mean_variance(x_t, x0, t, t_prev, schedule)
        wrong = [(NO_NOISE, mean), (VARIANCE_NOT_STD, mean + variance * noise),
                 (FIXED_LARGE, mean + beta.sqrt() * noise), (MEAN_SWAPPED, swapped_mean + variance.sqrt() * noise)]
        if (t_prev != t - 1).any():
            one_mean, one_var = posterior_mean_variance(x0, x_t, t, t - 1, schedule)
            wrong.append((ONE_STEP_ONLY, one_mean + one_var.sqrt() * noise))
        for v in sorted(set(t.tolist())) if len(set(t.tolist())) > 1 else []:
            i = t.tolist().index(v)
            m, var = posterior_mean_variance(x0, x_t, v, int(t_prev[i]), schedule)
            wrong += [(f"every sample used the same step ({v} -> {int(t_prev[i])}) instead of its own t[b] and "
                       f"t_prev[b]; index alpha_bar per sample", m + var.sqrt() * noise)]
        return wrong

    return run_check("ddpm_step", fn, cases, mistakes, probes=[last_step_is_noise_free, middle_step_uses_noise],
                     shape_hint=extra_dims_hint, verbose=verbose)


# ------------------------------------------------------------------------- 3. classifier-free guidance
WEIGHTS_SWAPPED = ("w and (1 - w) are swapped: the unconditional prediction got weight w and the conditional one "
                   "1 - w; at w = 0 you must get the unconditional prediction back, at w = 1 the conditional one")
FROM_COND = ("you extrapolated from the conditional prediction, pred_cond + w (pred_cond - pred_uncond) (Ho & "
             "Salimans' convention, where w = 0 means no guidance); Imagen's formula starts from the unconditional "
             "one, pred_uncond + w (pred_cond - pred_uncond), so that w = 1 means no guidance")
NO_DIFFERENCE = "the guidance term must be w times the *difference* (pred_cond - pred_uncond), not w times pred_cond"


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

    def mistakes(cond, uncond, w):
        return [(WEIGHTS_SWAPPED, classifier_free_guidance(uncond, cond, w)),  # w u + (1 - w) c
                (FROM_COND, classifier_free_guidance(cond, uncond, w + 1)),  # c + w (c - u) = u + (w + 1)(c - u)
                (NO_DIFFERENCE, uncond + w * cond)]

    return run_check("guidance", fn, cases, mistakes, verbose=verbose)


# ---------------------------------------------------------------------------------------- 4. thresholding
NOT_CLIPPED = "values outside [-1, 1] were not clipped: static thresholding clips x0 to [-1, 1]"
CLIPPED_01 = "you clipped to [0, 1]: diffusion works on images in [-1, 1], so x0 must be clipped to [-1, 1]"
TO_DISPLAY = "you clipped and then mapped to [0, 1] (the display range); thresholding must stay in [-1, 1]"
RESCALED = "you rescaled by the largest value instead of clipping: static thresholding clips to [-1, 1]"


def check_static_threshold(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x0) -> x0 clipped to [-1, 1]."""
    g = rng(4)
    inputs = [("a batch of 4 with values up to about 6", 2 * randn64(g, 4, 3, 8, 8)),
              ("values already inside [-1, 1] (nothing may change)", images64(g, 2)),
              ("a batch of 1 with values up to about 100", 30 * randn64(g, 1, 3, 8, 8)),
              ("exactly -1, 0 and 1 (the borders stay)", torch.tensor([-1.0, 0.0, 1.0], dtype=F64).repeat(2, 3, 1, 1))]
    cases = [Case(name, (x,), static_threshold(x)) for name, x in inputs]

    def mistakes(x):
        return [(NOT_CLIPPED, x), (CLIPPED_01, x.clamp(0, 1)), (TO_DISPLAY, (static_threshold(x) + 1) / 2),
                (RESCALED, x / x.abs().max())]

    return run_check("static_threshold", fn, cases, mistakes, verbose=verbose)


S_NOT_CLAMPED = ("s was not clamped at 1: an image already inside [-1, 1] (percentile s < 1) got stretched; "
                 "use s = max(1, percentile) so such images stay unchanged")
WHOLE_BATCH = ("the percentile was taken over the whole batch: compute one s per image, over that image's "
               "C*H*W values, so one saturated image does not rescale the others")
NOT_CLIPPED_DYN = ("you divided by s without clipping to [-s, s] first: the values beyond the percentile end up "
                   "outside [-1, 1]")
NOT_DIVIDED_DYN = "you clipped to [-s, s] but did not divide by s: the result must lie in [-1, 1]"
SIGNED_PERCENTILE = "the percentile must be taken of the absolute values |x0|, not of x0 itself"
STATIC_NOT_DYNAMIC = ("that is static thresholding (clipping to [-1, 1]); dynamic thresholding clips to [-s, s] "
                      "and divides by s")


def check_dynamic_threshold(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x0, p) -> clip(x0, -s, s) / s per image, s = max(1, p-quantile of |x0|)."""
    g = rng(5)

    def scaled(scales: list) -> Tensor:
        return randn64(g, len(scales), 3, 8, 8) * torch.tensor(scales, dtype=F64).reshape(-1, 1, 1, 1)  # (B, 3, 8, 8)

    inputs = [("a batch of 3 (one inside [-1, 1], two over-saturated), p = 0.95", scaled([0.3, 1.5, 3.0]), 0.95),
              ("a batch of 2 inside [-0.5, 0.5]: s < 1 must become 1, nothing changes", images64(g, 2) / 2, 0.95),
              ("a batch of 1 with values up to about 10, p = 0.9", scaled([4.0]), 0.9),
              ("p = 1.0 (s = the largest |value| of each image)", scaled([2.0, 0.5]), 1.0),
              ("4 images of very different scales, p = 0.99", scaled([0.5, 1.0, 4.0, 20.0]), 0.99)]
    cases = [Case(name, (x, p), dynamic_threshold(x, p)) for name, x, p in inputs]

    def mistakes(x, p):
        flat = x.abs().reshape(x.shape[0], -1)  # (B, C*H*W)
        q = torch.quantile(flat, p, dim=1).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1) percentile of |x0| per image
        s = q.clamp(min=1)
        q_signed = torch.quantile(x.reshape(x.shape[0], -1), p, dim=1).clamp(min=1).reshape(-1, 1, 1, 1)
        return [(STATIC_NOT_DYNAMIC, static_threshold(x)),
                (S_NOT_CLAMPED, torch.maximum(torch.minimum(x, q), -q) / q),
                (WHOLE_BATCH, dynamic_threshold(x.reshape(1, -1), p).reshape(x.shape)),  # the batch as one image
                (NOT_CLIPPED_DYN, x / s), (NOT_DIVIDED_DYN, torch.maximum(torch.minimum(x, s), -s)),
                (SIGNED_PERCENTILE, torch.maximum(torch.minimum(x, q_signed), -q_signed) / q_signed)]

    return run_check("dynamic_threshold", fn, cases, mistakes, shape_hint=extra_dims_hint, verbose=verbose)
