"""Checkers for the diffusion exercises 1 and 2: the forward process, its inverse, one DDPM step.

Every checker builds its cases from a fixed seed (the same verdict on every run), in float64, computes the
expected outputs with the *library* function (the single source of truth: no second copy of the maths here)
and lists the typical mistakes as wrong variants: the output a student making that one mistake gets on the
same case (a coefficient without its square root, 1 - sqrt(a) for sqrt(1 - a), alpha_bar looked up at t - 1,
brackets missing, ...), each written out in one line next to the diagnosis it stands for.

    check_q_sample(fn)           fn(x0, t, noise, alphas_cumprod) -> x_t                  diffusion.q_sample
    check_predict_x0(fn)         fn(x_t, t, eps, alphas_cumprod) -> x0                    diffusion.x0_from_eps
    check_ddpm_step(fn)          fn(x0, x_t, t, t_prev, alphas_cumprod, noise) -> x_prev  diffusion.ddpm_step

t and t_prev are LongTensors of shape (B,), one timestep per sample (t_prev = -1: the clean image); images
are (B, 3, H, W); alphas_cumprod is a float64 tensor (T,). Guidance and thresholding: `guidance_checks.py`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..diffusion import (NoiseSchedule, ddpm_step, posterior_mean_variance, q_sample, x0_eps_from_model_output,
                         x0_from_eps)
from .grading import (Case, CheckResult, extra_dims_hint, images64, noise_probes, one_value_for_all, randn64, rng,
                      run_check)

# ------------------------------------------------------------------------------ 1. the forward process
SIGNAL_NOT_SQRT = ("the image is scaled by alpha_bar_t instead of sqrt(alpha_bar_t): off by a factor "
                   "sqrt(alpha_bar_t) (alpha_bar_t is the *variance* kept from the signal)")
NOISE_NOT_SQRT = ("the noise is scaled by (1 - alpha_bar_t) instead of sqrt(1 - alpha_bar_t): 1 - alpha_bar_t is "
                  "the noise *variance*, its standard deviation is the square root")
BOTH_NOT_SQRT = ("both coefficients lack their square root: use sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), "
                 "not alpha_bar_t and 1 - alpha_bar_t")
SQRT_OUTSIDE = ("the square root is in the wrong place: the noise coefficient is sqrt(1 - alpha_bar_t), the root "
                "of the whole difference, not 1 - sqrt(alpha_bar_t)")
HALVED = ("your square roots came out as halves: raising to the power 1/2 without brackets around 1/2 computes "
          "(alpha_bar_t to the power 1) / 2, because the power is evaluated before the division")
SWAPPED = ("the signal and noise coefficients are swapped: x0 must be multiplied by sqrt(alpha_bar_t) (close to "
           "1 at small t) and the noise by sqrt(1 - alpha_bar_t)")
NOISE_SUBTRACTED = "the noise term was subtracted: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise"
T_MINUS_ONE = ("alpha_bar was looked up at t - 1 instead of t: alphas_cumprod[t] already belongs to timestep t "
               "(timesteps count from 0), and at t = 0 the index t - 1 = -1 wraps round to the *last* entry, "
               "alpha_bar_{T-1}, which turns an almost clean image into almost pure noise")
T_PLUS_ONE = ("alpha_bar was looked up at t + 1 instead of t: alphas_cumprod[t] already belongs to timestep t "
              "(and at t = T-1 the index t + 1 does not exist)")


def _lookup(abar: Tensor, t: Tensor) -> Tensor:
    """alphas_cumprod[t] as (B, 1, 1, 1), indexed the way a student indexes (index -1 wraps to the end)."""
    return abar[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)


def _off_by_one(abar: Tensor, t: Tensor) -> list[tuple[str, Tensor]]:
    """(diagnosis, alpha_bar as looked up by that mistake) for t - 1 (wrapping, clamped, or 1 at t = 0) and t + 1."""
    T = len(abar)
    wrong = [(T_MINUS_ONE, _lookup(abar, t - 1)), (T_MINUS_ONE, _lookup(abar, (t - 1).clamp(min=0))),
             (T_MINUS_ONE, torch.where(t > 0, abar[(t - 1).clamp(min=0)], 1.0).reshape(-1, 1, 1, 1))]
    if (t < T - 1).all():  # at t = T-1 the student's t + 1 raises an IndexError, explained by the error hint
        wrong.append((T_PLUS_ONE, _lookup(abar, t + 1)))
    return wrong


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
        a = _lookup(abar, t)
        x_t = lambda signal, noise_coef: signal * x0 + noise_coef * noise  # one wrong pair of coefficients
        return [(BOTH_NOT_SQRT, x_t(a, 1 - a)), (SIGNAL_NOT_SQRT, x_t(a, (1 - a).sqrt())),
                (NOISE_NOT_SQRT, x_t(a.sqrt(), 1 - a)), (SQRT_OUTSIDE, x_t(a.sqrt(), 1 - a.sqrt())),
                (HALVED, x_t(a / 2, (1 - a) / 2)), (HALVED, x_t(a.sqrt(), (1 - a) / 2)),
                (HALVED, x_t(a / 2, (1 - a).sqrt())),
                (SWAPPED, x_t((1 - a).sqrt(), a.sqrt())), (NOISE_SUBTRACTED, x_t(a.sqrt(), -(1 - a).sqrt())),
                *[(why, x_t(b.sqrt(), (1 - b).sqrt())) for why, b in _off_by_one(abar, t)],
                *one_value_for_all(t, lambda v: q_sample(x0, v, noise, abar))]

    cases = _timestep_cases(0, inputs, q_sample)
    return run_check("q_sample", fn, cases, mistakes, probes=noise_probes(cases[0].name, cases[0].args, 2),
                     shape_hint=extra_dims_hint, library={"q_sample": q_sample}, verbose=verbose)


NOT_DIVIDED = ("you did not divide by sqrt(alpha_bar_t): your x0 is off by a factor sqrt(alpha_bar_t) "
               "(solve x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for x0)")
MULTIPLIED = "you multiplied by sqrt(alpha_bar_t) where you must divide by it: off by a factor alpha_bar_t"
DIVIDED_BY_ABAR = ("you divided by alpha_bar_t instead of sqrt(alpha_bar_t): off by a factor "
                   "1 / sqrt(alpha_bar_t)")
DIVIDED_BY_NOISE_COEF = ("you divided by the noise coefficient sqrt(1 - alpha_bar_t); x0 is multiplied by "
                         "sqrt(alpha_bar_t) in x_t, so that is the coefficient to divide by")
SIGN = "the noise was added instead of subtracted: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)"
ONLY_EPS_DIVIDED = ("only the noise term was divided by sqrt(alpha_bar_t) (brackets missing): the whole difference "
                    "x_t - sqrt(1 - alpha_bar_t) eps must be divided")
ONLY_XT_DIVIDED = ("only x_t was divided by sqrt(alpha_bar_t) (brackets missing): the whole difference "
                   "x_t - sqrt(1 - alpha_bar_t) eps must be divided")
COEFFICIENTS_SWAPPED = ("you solved x_t = sqrt(1 - alpha_bar_t) x0 + sqrt(alpha_bar_t) eps, with the two "
                        "coefficients swapped: x0 carries sqrt(alpha_bar_t) and the noise sqrt(1 - alpha_bar_t)")


def check_predict_x0(fn: Callable, verbose: bool = True) -> CheckResult:
    """fn(x_t, t, eps, alphas_cumprod) -> x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    def inputs(g, t, abar):
        x0, eps = images64(g, len(t)), randn64(g, len(t), 3, 8, 8)
        return q_sample(x0, t, eps, abar), t, eps, abar

    def mistakes(x_t, t, eps, abar):
        a = _lookup(abar, t)
        solved = lambda a, noise_coef, divisor: (x_t - noise_coef * eps) / divisor  # one wrong solution of eq. 4
        return [(NOT_DIVIDED, solved(a, (1 - a).sqrt(), 1)), (MULTIPLIED, solved(a, (1 - a).sqrt(), 1 / a.sqrt())),
                (DIVIDED_BY_ABAR, solved(a, (1 - a).sqrt(), a)),
                (DIVIDED_BY_NOISE_COEF, solved(a, (1 - a).sqrt(), (1 - a).sqrt())),
                (NOISE_NOT_SQRT, solved(a, 1 - a, a.sqrt())), (SQRT_OUTSIDE, solved(a, 1 - a.sqrt(), a.sqrt())),
                *[(HALVED, solved(a, noise_coef, divisor))  # "/ a ** 1/2" is "/ a / 2"; "/ (a ** 1/2)" is "/ (a / 2)"
                  for noise_coef, divisor in [((1 - a) / 2, a / 2), ((1 - a) / 2, 2 * a), ((1 - a) / 2, a.sqrt()),
                                              ((1 - a).sqrt(), a / 2), ((1 - a).sqrt(), 2 * a)]],
                (SIGN, solved(a, -(1 - a).sqrt(), a.sqrt())),
                (ONLY_EPS_DIVIDED, x_t - (1 - a).sqrt() * eps / a.sqrt()),
                (ONLY_XT_DIVIDED, x_t / a.sqrt() - (1 - a).sqrt() * eps),
                (COEFFICIENTS_SWAPPED, solved(a, a.sqrt(), (1 - a).sqrt())),
                *[(why, solved(b, (1 - b).sqrt(), b.sqrt())) for why, b in _off_by_one(abar, t)],
                *one_value_for_all(t, lambda v: x0_from_eps(x_t, v, eps, abar))]

    return run_check("predict_x0", fn, _timestep_cases(1, inputs, x0_from_eps), mistakes, shape_hint=extra_dims_hint,
                     library={"x0_from_eps": x0_from_eps, "x0_eps_from_model_output": x0_eps_from_model_output},
                     verbose=verbose)


# ------------------------------------------------------------------------------------ 2. one DDPM step
NOISE_AT_LAST_STEP = ("noise was added at the last step (t_prev = -1): the final image must be the posterior mean "
                      "(= x0 there) without noise; the posterior variance beta_tilde is exactly 0 at t_prev = -1")
NO_NOISE = ("your step ignores `noise`: every step except the last must add sqrt(beta_tilde) * noise, otherwise "
            "DDPM sampling is deterministic and its images come out smooth and washed out")
VARIANCE_NOT_STD = ("the noise is scaled by the variance beta_tilde instead of the standard deviation "
                    "sqrt(beta_tilde)")
ROOT_OF_BETA_ONLY = ("the noise is scaled by sqrt(beta') (1 - alpha_bar_prev) / (1 - alpha_bar_t): the square "
                     "root must cover the whole variance beta_tilde, the fraction included")
FIXED_LARGE = ("the noise is scaled by sqrt(beta') with beta' = 1 - alpha_bar_t / alpha_bar_prev (DDPM's other, "
               "'fixed large' choice); this exercise uses the posterior variance "
               "beta_tilde = beta' (1 - alpha_bar_prev) / (1 - alpha_bar_t)")
MEAN_SWAPPED = "the coefficients of x0 and x_t in the posterior mean are swapped"
SQRT_OUTSIDE_MEAN = ("the square root is in the wrong place in the x_t coefficient of the mean: it is "
                     "sqrt(1 - beta') = sqrt(alpha'), not 1 - sqrt(beta')")
WRONG_DENOMINATOR = ("you divided by 1 - alpha_bar_prev where the posterior divides by 1 - alpha_bar_t (in the "
                     "mean's coefficients and in beta_tilde the denominator is always 1 - alpha_bar_t)")
CUMULATIVE_BETA = ("beta' was taken as 1 - alpha_bar_t: for a jump from t to t_prev it is "
                   "1 - alpha_bar_t / alpha_bar_prev (the noise added between t_prev and t only)")
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
        a_t, a_prev = _abar_with_clean(schedule, t), _abar_with_clean(schedule, t_prev)  # (B, 1, 1, 1) each

        def step(beta, denominator=None, mean_denominator=None, x_t_coef=None, std=None):
            """x_prev with one piece of DDPM eq. 7 replaced (defaults: the right piece)."""
            d = 1 - a_t if denominator is None else denominator
            d_mean = d if mean_denominator is None else mean_denominator
            c_xt = (1 - beta).sqrt() if x_t_coef is None else x_t_coef
            mean = a_prev.sqrt() * beta / d_mean * x0 + c_xt * (1 - a_prev) / d_mean * x_t
            return mean + (beta * (1 - a_prev) / d).sqrt() * noise if std is None else mean + std * noise

        beta = 1 - a_t / a_prev  # beta' of the jump
        mean, variance = posterior_mean_variance(x0, x_t, t, t_prev, schedule)
        swapped_mean, _ = posterior_mean_variance(x_t, x0, t, t_prev, schedule)
        wrong = [(NO_NOISE, mean), (VARIANCE_NOT_STD, mean + variance * noise),
                 (ROOT_OF_BETA_ONLY, mean + beta.sqrt() * (1 - a_prev) / (1 - a_t) * noise),
                 (FIXED_LARGE, mean + beta.sqrt() * noise), (MEAN_SWAPPED, swapped_mean + variance.sqrt() * noise),
                 (SQRT_OUTSIDE_MEAN, step(beta, x_t_coef=1 - beta.sqrt())),
                 (WRONG_DENOMINATOR, step(beta, denominator=1 - a_prev)),
                 (WRONG_DENOMINATOR, step(beta, mean_denominator=1 - a_prev)),
                 (WRONG_DENOMINATOR, mean + (beta * (1 - a_t) / (1 - a_prev)).sqrt() * noise),
                 (CUMULATIVE_BETA, step(1 - a_t))]
        if (t_prev != t - 1).any():
            one_mean, one_var = posterior_mean_variance(x0, x_t, t, t - 1, schedule)
            wrong.append((ONE_STEP_ONLY, one_mean + one_var.sqrt() * noise))
        for v in sorted(set(t.tolist())) if len(set(t.tolist())) > 1 else []:
            i = t.tolist().index(v)
            m, var = posterior_mean_variance(x0, x_t, v, int(t_prev[i]), schedule)
            wrong += [(f"every sample used the same step ({v} -> {int(t_prev[i])}) instead of its own t[b] and "
                       f"t_prev[b]; index alpha_bar per sample", m + var.sqrt() * noise)]
        return wrong

    middle = (cases[0].args[0][:2], cases[0].args[1][:2], torch.tensor([500, 500]), torch.tensor([250, 250]), abar,
              randn64(rng(20), 2, 3, 8, 8))
    probes = [*noise_probes("a middle step t = 500 -> t_prev = 250", middle, 5, ignored=False),
              last_step_is_noise_free, middle_step_uses_noise]
    return run_check("ddpm_step", fn, cases, mistakes, probes=probes, shape_hint=extra_dims_hint,
                     library={"ddpm_step": ddpm_step, "posterior_mean_variance": posterior_mean_variance},
                     verbose=verbose)
