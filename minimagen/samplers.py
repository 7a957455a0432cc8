"""Faster samplers: DPM-Solver++(2M) and Karras et al.'s Euler / Heun on the EDM sigma schedule.

DDIM (diffusion.py) needs 50-250 network evaluations (NFE) for a good image; these solvers of the same
probability-flow ODE aim at 10-25. Each only needs the *data prediction* x0 = denoise(x_t, t), already guided
(classifier-free guidance) and thresholded, so Imagen's tricks carry over: DPM-Solver++ (Lu et al. 2022) was
designed for guided sampling with thresholding.

Two coordinate systems for the same noisy image (both used below, the conversion is explicit):
    VP  (DDPM, what the U-Nets see):  x_t   = alpha x_0 + sigma_vp eps,   alpha = sqrt(abar), sigma_vp = sqrt(1 - abar)
    EDM (Karras et al. 2022, §2):     x_edm = x_0 + sigma eps = x_t / alpha,   sigma = sigma_vp / alpha
                                      = sqrt((1 - abar) / abar)
so abar = 1 / (1 + sigma^2) and lambda = log(alpha / sigma_vp) = -log(sigma) (DPM-Solver's half-log-SNR).
A fractional timestep t in [0, T-1] names the noise level whose log-sigma is linearly interpolated between the
schedule's integer timesteps (EDM App. C.3.4 / k-diffusion's discrete wrapper do the same); t = -1 is sigma = 0.

Interface.  denoise(x_t, t) -> x0: x_t (B, C, H, W) in VP space, t float (B,) (float64; float32 on MPS) in [0, T-1].
make_denoiser() builds it from a model_fn(x_t, t) in any prediction space (+ thresholding). The loops:
    dpmpp_2m_sample   DDIM's trailing timesteps (solver_order=1 is DDIM, eta = 0) or Karras sigmas
    karras_sample     method "euler" | "heun" on karras_sigmas; s_churn > 0 adds EDM Algorithm 2's noise
    run_sampler       one of ODE_SAMPLERS by name; nfe(sampler, n) = network evaluations (a CFG pair counts once)
    sample            any sampler of diffusion.SAMPLERS by name (ddim/ddpm: diffusion.sample_loop); what the cascade calls
Map: sigma <-> t -> make_denoiser -> karras_sigmas -> dpmpp_2m_step, dpmpp_2m_sample -> euler_step, heun_step,
churn, karras_sample -> run_sampler, nfe.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .diffusion import (ODE_SAMPLERS, THRESHOLDING_MODES, NoiseSchedule, apply_thresholding,
                        canonical_prediction_type, check_sampling_options, sample_loop)

KARRAS_METHODS = ("euler", "heun")
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0  # Karras et al. 2022, Table 1 ("ours", for VP models too)
Denoise = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t float (B,)) -> x0 (B, ...), guided and thresholded
Callback = Callable[[int, float, Tensor, Tensor], None]  # (step_index, t, x_t, x0_pred), x_t in VP space


# ------------------------------------------------------------------------------ sigma <-> timestep
def schedule_sigmas(schedule: NoiseSchedule) -> Tensor:
    """EDM noise levels of the schedule's timesteps, float64 (T,), increasing: sigma_t = sqrt((1 - abar_t) / abar_t)."""
    abar = schedule.alphas_cumprod.detach().to("cpu", torch.float64)
    return ((1 - abar) / abar).sqrt()  # sigma = sigma_vp / alpha   (EDM §2, VP: s(t) = 1 / sqrt(1 + sigma^2))


def t_to_sigma(t: float | Tensor, schedule: NoiseSchedule) -> Tensor:
    """Fractional timesteps in [0, T-1] (or exactly -1, the clean image) -> sigma (float64), log-linear in t."""
    t = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
    log_sigmas = schedule_sigmas(schedule).log()  # (T,)
    T = len(log_sigmas)
    clean = t == -1
    if ((t < 0) & ~clean).any() or (t > T - 1).any() or t.isnan().any():
        raise ValueError(f"t must be in [0, {T - 1}] (or exactly -1, the clean image), got {t.tolist()}")
    tt = t.clamp(min=0)
    low = tt.floor().long().clamp(max=T - 2)  # index of the schedule point at or below t
    w = tt - low  # in [0, 1]
    log_sigma = (1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]  # log sigma(t), linear between integers
    return torch.where(clean, torch.zeros_like(t), log_sigma.exp())


def sigma_to_t(sigma: float | Tensor, schedule: NoiseSchedule) -> Tensor:
    """Inverse of t_to_sigma: sigma in [sigma_0, sigma_{T-1}] (or 0) -> fractional t, float64."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
    log_sigmas = schedule_sigmas(schedule).log()  # (T,) increasing in t
    lo, hi = log_sigmas[0].exp().item(), log_sigmas[-1].exp().item()
    clean = sigma == 0
    inside = (sigma >= lo * (1 - 1e-12)) & (sigma <= hi * (1 + 1e-12))  # rounding at the end points is fine
    if not (inside | clean).all():
        raise ValueError(f"sigma must be 0 or within the schedule's range [{lo:.6g}, {hi:.6g}], got {sigma.tolist()}")
    log_sigma = sigma.clamp(lo, hi).log()
    low = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).reshape(log_sigma.shape) - 1  # schedule point below
    low = low.clamp(0, len(log_sigmas) - 2)
    w = (log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])  # fraction of the way to low + 1
    return torch.where(clean, torch.full_like(sigma, -1.0), low + w.clamp(0, 1))


def _time_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64


# ----------------------------------------------------------------------------------- the denoiser
def x0_from_model_output(model_output: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule,
                         prediction_type: str) -> Tensor:
    """Data prediction at fractional timesteps t (B,): diffusion.x0_eps_from_model_output with abar(t) interpolated.

    With abar = 1 / (1 + sigma^2): sqrt(abar) = 1 / sqrt(1 + sigma^2), sqrt(1 - abar) = sigma / sqrt(1 + sigma^2).
    """
    kind = canonical_prediction_type(prediction_type)
    if kind == "sample":
        return model_output
    sigma = t_to_sigma(t.reshape(-1), schedule)  # (B,) float64
    shape = (-1, *([1] * (x_t.dim() - 1)))  # (B, 1, ..., 1)
    as_x = lambda c: c.reshape(shape).to(device=x_t.device, dtype=x_t.dtype)  # noqa: E731
    if kind == "epsilon":  # x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) = sqrt(1 + sigma^2) x_t - sigma eps
        return as_x((1 + sigma**2).sqrt()) * x_t - as_x(sigma) * model_output
    a, b = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()  # sqrt(abar), sqrt(1 - abar)
    return as_x(a) * x_t - as_x(b) * model_output  # x_0 = sqrt(abar) x_t - sqrt(1 - abar) v   (Salimans & Ho 2022)


def make_denoiser(model_fn: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule,
                  prediction_type: str = "epsilon", thresholding: str = "dynamic",
                  dynamic_thresholding_ratio: float = 0.95, sample_max_value: float | None = None) -> Denoise:
    """denoise(x_t, t) -> x0 from a model_fn(x_t, t) predicting in `prediction_type` space, then thresholded.

    Classifier-free guidance belongs inside model_fn (it is linear, so guiding eps, x0 or v is the same).
    """
    kind = canonical_prediction_type(prediction_type)
    if thresholding not in THRESHOLDING_MODES:
        raise ValueError(f"thresholding must be one of {THRESHOLDING_MODES}, got {thresholding!r}")

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        x0 = x0_from_model_output(model_fn(x_t, t), x_t, t, schedule, kind)
        return apply_thresholding(x0, thresholding, dynamic_thresholding_ratio, sample_max_value)
    return denoise


def _check_steps(num_inference_steps, schedule: NoiseSchedule) -> None:
    T = schedule.num_train_timesteps
    n = num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be an int in [1, num_train_timesteps={T}], got {n!r}")


def _progress(steps, progress: bool | str, name: str):
    if not progress:
        return steps
    from tqdm.auto import tqdm
    return tqdm(steps, desc=progress if isinstance(progress, str) else name, leave=False)


# ------------------------------------------------------------------------------ Karras sigmas
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, sigma_n = 0.

    Returns float64 (n+1,), decreasing, ending in 0; n = 1 gives [sigma_max, 0]. rho = 7 spends more steps at
    low noise (EDM §3, Fig. 3); rho = 1 is evenly spaced in sigma.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of steps) must be an int >= 1, got {n!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}; Karras et al. use 7")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)  # i/(n-1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho  # (n,)
    sigmas[0], sigmas[-1] = sigma_max, sigma_min if n > 1 else sigma_max  # exact ends ((s^(1/rho))^rho is off by ulps)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])  # (n+1,) sigma_n = 0


def default_sigma_range(schedule: NoiseSchedule) -> tuple[float, float]:
    """(sigma_min, sigma_max) for karras_sigmas: EDM's [0.002, 80] clipped to the schedule's [sigma_0, sigma_{T-1}].

    Not the schedule's own sigma_{T-1}: the cosine schedule's beta cap puts it at ~2e4 (abar_999 = 2.4e-9), and
    rho = 7 would then spend most steps far above sigma = 80, where x_t is noise whatever the image.
    """
    sig = schedule_sigmas(schedule)
    return max(EDM_SIGMA_MIN, sig[0].item()), min(EDM_SIGMA_MAX, sig[-1].item())


# ------------------------------------------------------------------------------ DPM-Solver++(2M)
def dpmpp_2m_step(x0: Tensor, x: Tensor, sigma: float, sigma_next: float, x0_last: Tensor | None = None,
                  sigma_last: float | None = None) -> Tensor:
    """One DPM-Solver++ step (Lu et al. 2022, Algorithm 2) of x (VP space) from noise level sigma to sigma_next.

    Noise levels are EDM sigmas (t_to_sigma; sigma_next = 0 is the clean image), so lambda = -log(sigma).
    x0 = denoise(x, t(sigma)); x0_last = the prediction at the previous, noisier level sigma_last > sigma (None:
    first order, DPM-Solver++(1), which is DDIM with eta = 0). The paper's t_{i-2}, t_{i-1}, t_i are sigma_last,
    sigma, sigma_next here. Second order is undefined when landing on sigma_next = 0 (h = inf there).
    """
    if not sigma > sigma_next >= 0:
        raise ValueError(f"need sigma > sigma_next >= 0 (sampling goes from noisy to clean), got sigma={sigma}, "
                         f"sigma_next={sigma_next}")
    if (x0_last is None) != (sigma_last is None):
        raise ValueError("pass x0_last and sigma_last together (second order) or neither (first order)")
    alpha_next = 1 / math.sqrt(1 + sigma_next**2)  # alpha_{t_i} = sqrt(abar) = 1 / sqrt(1 + sigma^2)
    ratio = sigma_next / sigma * math.sqrt((1 + sigma**2) / (1 + sigma_next**2))  # sigma_vp_{t_i} / sigma_vp_{t_{i-1}}
    coef = alpha_next * (1 - sigma_next / sigma)  # -alpha_{t_i} (e^{-h_i} - 1), e^{-h_i} = sigma_next / sigma
    if x0_last is None:
        return ratio * x + coef * x0  # x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x - alpha_{t_i} (e^{-h_i} - 1) x0
    if sigma_next == 0:
        raise ValueError("the step to sigma_next = 0 must be first order (h = inf there): pass x0_last=None")
    if not sigma_last > sigma:
        raise ValueError(f"sigma_last must be > sigma (the previous, noisier level), got {sigma_last} <= {sigma}")
    r = math.log(sigma_last / sigma) / math.log(sigma / sigma_next)  # r_i = h_{i-1} / h_i, h = lambda' - lambda
    D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_last  # D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}
    return ratio * x + coef * D  # x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x - alpha_{t_i} (e^{-h_i} - 1) D_i


@torch.no_grad()
def dpmpp_2m_sample(denoise: Denoise, x_T: Tensor, schedule: NoiseSchedule, num_inference_steps: int, *,
                    solver_order: int = 2, timestep_spacing: str = "trailing", rho: float = 7.0,
                    callback: Callback | None = None, progress: bool | str = False) -> Tensor:
    """DPM-Solver++(2M) from x_T ~ N(0, I) to x_0 in num_inference_steps denoise calls (NFE = steps).

    timestep_spacing "trailing": schedule.inference_timesteps, the integer timesteps DDIM visits (from T-1);
    "karras": karras_sigmas(n, *default_sigma_range, rho), fractional timesteps ("DPM++ 2M Karras").
    The first step has no history and the last one lands on the clean image, where only the first-order step is
    defined (it returns that step's x0, as DDIM does), so steps 2..n-1 are second order ("lower order final" is
    always on). solver_order=1: every step first order (= DDIM with eta = 0 on the same timesteps).
    callback(i, t, x_t, x0_pred): t an int ("trailing") or a float ("karras").
    """
    _check_steps(num_inference_steps, schedule)
    if solver_order not in (1, 2):
        raise ValueError(f"solver_order must be 1 (= DDIM) or 2 (DPM-Solver++(2M)), got {solver_order!r}")
    if timestep_spacing == "trailing":
        timesteps = schedule.inference_timesteps(num_inference_steps).tolist()  # e.g. [999, 749, 499, 249]
        sigmas = schedule_sigmas(schedule)[timesteps].tolist() + [0.0]  # (n + 1,), exact at integer t
    elif timestep_spacing == "karras":
        sigmas = karras_sigmas(num_inference_steps, *default_sigma_range(schedule), rho).tolist()
        timesteps = sigma_to_t(sigmas[:-1], schedule).tolist()  # fractional
    else:
        raise ValueError(f"timestep_spacing must be 'trailing' or 'karras', got {timestep_spacing!r}")
    x, x0_last, sigma_last = x_T, None, None
    for i in _progress(range(num_inference_steps), progress, "DPM-Solver++(2M)"):
        t, sigma, sigma_next = timesteps[i], sigmas[i], sigmas[i + 1]
        x0 = denoise(x, torch.full((x.shape[0],), t, dtype=_time_dtype(x), device=x.device))  # t as float (B,)
        if callback is not None:
            callback(i, t, x, x0)
        second = solver_order == 2 and x0_last is not None and sigma_next > 0
        x = dpmpp_2m_step(x0, x, sigma, sigma_next, *((x0_last, sigma_last) if second else (None, None)))
        x0_last, sigma_last = x0, sigma
    return x


# ------------------------------------------------------------------------ Karras et al. (EDM) samplers
def edm_derivative(x: Tensor, x0: Tensor, sigma: float) -> Tensor:
    return (x - x0) / sigma  # d = dx/dsigma = (x - D(x; sigma)) / sigma   (EDM Algorithm 1, line 4)


def euler_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step of the probability-flow ODE in EDM space (EDM Algorithm 1, line 5)."""
    return x + (sigma_next - sigma) * edm_derivative(x, x0, sigma)  # x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i


def heun_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float, x_next: Tensor, x0_next: Tensor) -> Tensor:
    """Heun's correction (EDM Algorithm 1, lines 7-8): x_next = euler_step(...), x0_next = D(x_next; sigma_next) > 0."""
    d, d_next = edm_derivative(x, x0, sigma), edm_derivative(x_next, x0_next, sigma_next)  # d_i, d'_i
    return x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_next)  # x_{i+1} = x_i + (s_{i+1} - s_i)(d_i/2 + d'_i/2)


def churn(x: Tensor, sigma: float, gamma: float, noise: Tensor) -> tuple[Tensor, float]:
    """EDM Algorithm 2, lines 5-6: raise the noise level to sigma_hat = (1 + gamma) sigma with noise (S_noise eps)."""
    sigma_hat = sigma * (1 + gamma)  # sigma_hat = sigma_i + gamma_i sigma_i
    return x + math.sqrt(sigma_hat**2 - sigma**2) * noise, sigma_hat  # x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) eps


@torch.no_grad()
def karras_sample(denoise: Denoise, x_T: Tensor, schedule: NoiseSchedule, num_inference_steps: int, *,
                  method: str = "heun", rho: float = 7.0, sigma_min: float | None = None,
                  sigma_max: float | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                  s_tmax: float = math.inf, s_noise: float = 1.0, generator: torch.Generator | None = None,
                  callback: Callback | None = None, progress: bool | str = False) -> Tensor:
    """Euler or Heun (Karras et al. 2022, Algorithms 1-2) on karras_sigmas, from x_T ~ N(0, I) (VP) to x_0.

    num_inference_steps = n sigmas > 0, then sigma_n = 0; NFE: Euler n, Heun 2n - 1 (no correction on the
    last step, to sigma = 0, EDM Algorithm 1 line 6). sigma_min/sigma_max: default_sigma_range(schedule), and
    within the schedule's [sigma_0, sigma_{T-1}] (the noise levels it was trained on). The loop runs in EDM space:
    x_edm = x_vp * sqrt(1 + sigma^2) at the start, and denoise sees x_vp = x_edm / sqrt(1 + sigma^2), t(sigma).
    x_T ~ N(0, I) stands for x_t at sigma_max: its signal part, x_0 / sqrt(1 + sigma_max^2) (1.2 % at 80), is
    neglected, as every sampler here neglects it at its first noise level.
    s_churn > 0: Algorithm 2's stochastic sampler; gamma_i = min(s_churn/n, sqrt(2) - 1) for sigma_i in
    [s_tmin, s_tmax], further capped so sigma_hat never exceeds the schedule's sigma_{T-1}; noise from
    `generator`. callback(i, t, x_t, x0_pred): t a float, x_t in VP space, at each step's first evaluation.
    """
    _check_steps(num_inference_steps, schedule)
    if method not in KARRAS_METHODS:
        raise ValueError(f"method must be one of {KARRAS_METHODS}, got {method!r}")
    if not s_churn >= 0:
        raise ValueError(f"s_churn must be >= 0 (0 = deterministic, EDM Algorithm 1), got {s_churn}")
    if not s_noise >= 0:
        raise ValueError(f"s_noise must be >= 0 (EDM uses 1.0-1.007), got {s_noise}")
    if not s_tmin <= s_tmax:
        raise ValueError(f"s_tmin must be <= s_tmax (the sigma range where churn applies), got {s_tmin}, {s_tmax}")
    all_sigmas = schedule_sigmas(schedule)
    lo, hi = all_sigmas[0].item(), all_sigmas[-1].item()
    default_min, default_max = default_sigma_range(schedule)
    sigma_min = default_min if sigma_min is None else sigma_min
    sigma_max = default_max if sigma_max is None else sigma_max
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not lo * (1 - 1e-12) <= value <= hi * (1 + 1e-12):
            raise ValueError(f"{name}={value} is outside the schedule's sigma range [{lo:.6g}, {hi:.6g}]; the "
                             f"network never saw that noise level")
    sigmas = karras_sigmas(num_inference_steps, sigma_min, sigma_max, rho).tolist()  # n + 1 values, last 0
    n, batch = num_inference_steps, x_T.shape[0]

    def D(x_edm: Tensor, sigma: float) -> tuple[Tensor, Tensor, float]:
        """D(x; sigma) of EDM from the VP denoiser; returns (x0, x_vp, t)."""
        x_vp = x_edm / math.sqrt(1 + sigma**2)  # x_vp = sqrt(abar) x_edm, abar = 1 / (1 + sigma^2)
        t = sigma_to_t(sigma, schedule).item()
        return denoise(x_vp, torch.full((batch,), t, dtype=_time_dtype(x_vp), device=x_vp.device)), x_vp, t

    x = x_T * math.sqrt(1 + sigmas[0] ** 2)  # x_edm = x_vp / sqrt(abar(sigma_max))
    for i in _progress(range(n), progress, f"Karras {method}"):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0  # EDM Algorithm 2, line 4
        gamma = max(0.0, min(gamma, hi / sigma - 1))  # keep sigma_hat <= sigma_{T-1}: no untrained noise levels
        if gamma > 0:
            device = generator.device if generator is not None else x.device
            noise = s_noise * torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
            x, sigma = churn(x, sigma, gamma, noise)  # eps_i ~ N(0, S_noise^2 I)
        x0, x_vp, t = D(x, sigma)
        if callback is not None:
            callback(i, t, x_vp, x0)
        x_next = euler_step(x, x0, sigma, sigma_next)
        if method == "heun" and sigma_next > 0:
            x_next = heun_step(x, x0, sigma, sigma_next, x_next, D(x_next, sigma_next)[0])
        x = x_next
    return x  # sigma_n = 0: EDM and VP space coincide


def run_sampler(sampler: str, denoise: Denoise, x_T: Tensor, schedule: NoiseSchedule, num_inference_steps: int,
                *, generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool | str = False) -> Tensor:
    """Dispatch by name (ODE_SAMPLERS), each with its defaults: "dpmpp_2m" (trailing timesteps), "dpmpp_2m_karras",
    "euler", "heun" (deterministic; generator unused unless churn is asked for through karras_sample)."""
    if sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
        spacing = "karras" if sampler == "dpmpp_2m_karras" else "trailing"
        return dpmpp_2m_sample(denoise, x_T, schedule, num_inference_steps, timestep_spacing=spacing,
                               callback=callback, progress=progress)
    if sampler in KARRAS_METHODS:
        return karras_sample(denoise, x_T, schedule, num_inference_steps, method=sampler, generator=generator,
                             callback=callback, progress=progress)
    raise ValueError(f"sampler must be one of {ODE_SAMPLERS}, got {sampler!r}")


def sample(model_fn: Callable[[Tensor, Tensor], Tensor], x_T: Tensor, schedule: NoiseSchedule,
           num_inference_steps: int, sampler: str = "ddim", eta: float = 0.0, prediction_type: str = "epsilon",
           thresholding: str = "dynamic", dynamic_thresholding_ratio: float = 0.95,
           sample_max_value: float | None = None, generator: torch.Generator | None = None,
           callback: Callback | None = None, progress: bool | str = False) -> Tensor:
    """Any sampler of diffusion.SAMPLERS by name, with diffusion.sample_loop's arguments: "ddim" and "ddpm" run
    sample_loop (DDPM Algorithm 2 / DDIM), the ODE solvers run on make_denoiser(model_fn, ...) (eta is unused)."""
    check_sampling_options(sampler, eta, thresholding, dynamic_thresholding_ratio, sample_max_value)
    if sampler not in ODE_SAMPLERS:
        return sample_loop(model_fn, x_T, schedule, num_inference_steps, sampler=sampler, eta=eta,
                           prediction_type=prediction_type, thresholding=thresholding,
                           dynamic_thresholding_ratio=dynamic_thresholding_ratio, sample_max_value=sample_max_value,
                           generator=generator, callback=callback, progress=progress)
    denoise = make_denoiser(model_fn, schedule, prediction_type, thresholding, dynamic_thresholding_ratio,
                            sample_max_value)
    return run_sampler(sampler, denoise, x_T, schedule, num_inference_steps, generator=generator,
                       callback=callback, progress=progress)


def nfe(sampler: str, num_inference_steps: int) -> int:
    """Network evaluations per image (one classifier-free-guidance pair = one batched evaluation).

    ddpm, ddim, dpmpp_2m(_karras), euler: n. heun: 2n - 1 (two per step, one on the last step to sigma = 0).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    if sampler in ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler"):
        return num_inference_steps
    if sampler == "heun":
        return 2 * num_inference_steps - 1
    raise ValueError(f"sampler must be one of ('ddpm', 'ddim') + {ODE_SAMPLERS}, got {sampler!r}")
