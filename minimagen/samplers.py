"""Faster samplers: DPM-Solver++(2M) and Karras et al.'s Euler / Heun on the EDM sigma schedule.

DDIM (diffusion.py) needs 50-250 network evaluations (NFE) for a good image; these second-order solvers of the
same probability-flow ODE get there in 10-25. Every one of them only needs the *data prediction*
x0 = denoise(x_t, t), already guided (classifier-free guidance) and thresholded, which is why they combine with
Imagen's tricks: DPM-Solver++ (Lu et al. 2022) was designed for guided sampling with thresholding.

Two coordinate systems for the same noisy image (both used below, the conversion is explicit):
    VP  (DDPM, what the U-Nets see):  x_t   = alpha x_0 + sigma_vp eps,   alpha = sqrt(abar), sigma_vp = sqrt(1 - abar)
    EDM (Karras et al. 2022, §2):     x_edm = x_0 + sigma eps = x_t / alpha,   sigma = sigma_vp / alpha
                                      = sqrt((1 - abar) / abar)
so abar = 1 / (1 + sigma^2) and lambda = log(alpha / sigma_vp) = -log(sigma) (DPM-Solver's half-log-SNR).
A fractional timestep t in [0, T-1] names the noise level whose log-sigma is linearly interpolated between the
schedule's integer timesteps (EDM App. C.3.4 / k-diffusion's discrete wrapper do the same); t = -1 is sigma = 0.

Interface.  denoise(x_t, t) -> x0: x_t (B, C, H, W) in VP space, t float (B,) (float64; float32 on MPS) in [0, T-1].
make_denoiser() builds it from a model_fn(x_t, t) in any prediction space (+ thresholding). The loops:
    dpmpp_2m_sample   timesteps of NoiseSchedule.inference_timesteps (trailing); solver_order=1 is DDIM (eta = 0)
    karras_sample     method "euler" | "heun" on karras_sigmas; s_churn > 0 adds EDM Algorithm 2's noise
NFE (network evaluations, a CFG pair counted as one batched call): nfe(sampler, num_inference_steps).
Map: sigma <-> t conversions -> make_denoiser -> dpmpp_2m_step, dpmpp_2m_sample -> karras_sigmas, euler_step,
heun_step, churn -> karras_sample -> nfe.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .diffusion import THRESHOLDING_MODES, NoiseSchedule, apply_thresholding, canonical_prediction_type

SAMPLERS = ("dpmpp_2m", "euler", "heun")
KARRAS_METHODS = ("euler", "heun")
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


# ------------------------------------------------------------------------------ DPM-Solver++(2M)
def _abar(alphas_cumprod: Tensor, t: int) -> float:
    return 1.0 if t == -1 else float(alphas_cumprod[t])  # abar_{-1} = 1: the clean image


def _lambda(abar: float) -> float:
    return 0.5 * (math.log(abar) - math.log1p(-abar)) if abar < 1 else math.inf  # lambda = log(alpha / sigma_vp)


def dpmpp_2m_step(x0: Tensor, x_t: Tensor, t: int, t_prev: int, alphas_cumprod: Tensor,
                  x0_last: Tensor | None = None, t_last: int | None = None) -> Tensor:
    """One DPM-Solver++ step from t to t_prev < t (Lu et al. 2022, Algorithm 2), in VP space, ints t.

    x0 = denoise(x_t, t); x0_last = the prediction at the previous, noisier timestep t_last > t (None: the
    first-order step, DPM-Solver++(1), which is DDIM with eta = 0). Paper's indices: t_{i-2} = t_last,
    t_{i-1} = t, t_i = t_prev. The second-order step is undefined when landing on t_prev = -1 (lambda = inf).
    """
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (t, t_prev)) or not -1 <= t_prev < t:
        raise ValueError(f"t and t_prev must be ints with -1 <= t_prev < t, got t={t!r}, t_prev={t_prev!r}")
    abar_t, abar_p = _abar(alphas_cumprod, t), _abar(alphas_cumprod, t_prev)
    h = _lambda(abar_p) - _lambda(abar_t)  # h_i = lambda_{t_i} - lambda_{t_{i-1}}
    ratio = math.sqrt((1 - abar_p) / (1 - abar_t))  # sigma_{t_i} / sigma_{t_{i-1}}   (VP sigmas)
    coef = math.sqrt(abar_p) * -math.expm1(-h)  # -alpha_{t_i} (e^{-h_i} - 1)
    if (x0_last is None) != (t_last is None):
        raise ValueError("pass x0_last and t_last together (second order) or neither (first order)")
    if x0_last is None:
        return ratio * x_t + coef * x0  # x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x - alpha_{t_i} (e^{-h} - 1) x0
    if t_prev == -1:
        raise ValueError("the step to t_prev = -1 must be first order (h = inf there): pass x0_last=None")
    if not isinstance(t_last, int) or not t < t_last < len(alphas_cumprod):
        raise ValueError(f"t_last must be an int in ({t}, {len(alphas_cumprod) - 1}], got {t_last!r}")
    r = (_lambda(abar_t) - _lambda(_abar(alphas_cumprod, t_last))) / h  # r_i = h_{i-1} / h_i
    D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_last  # D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}
    return ratio * x_t + coef * D  # x_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) x - alpha_{t_i} (e^{-h_i} - 1) D_i


@torch.no_grad()
def dpmpp_2m_sample(denoise: Denoise, x_T: Tensor, schedule: NoiseSchedule, num_inference_steps: int, *,
                    solver_order: int = 2, callback: Callback | None = None, progress: bool | str = False) -> Tensor:
    """DPM-Solver++(2M) from x_T ~ N(0, I) at t = T-1 to x_0 in num_inference_steps denoise calls (NFE = steps).

    Timesteps: schedule.inference_timesteps (trailing), the same DDIM visits. The first step has no history and
    the last one lands on t = -1, where only the first-order step is defined (it returns that step's x0, as DDIM
    does): so the solver is second order on steps 2..n-1 ("lower order final" is therefore always on).
    solver_order=1: every step first order (= DDIM, eta = 0). callback(i, t, x_t, x0_pred), t an int.
    """
    _check_steps(num_inference_steps, schedule)
    if solver_order not in (1, 2):
        raise ValueError(f"solver_order must be 1 (= DDIM) or 2 (DPM-Solver++(2M)), got {solver_order!r}")
    abar = schedule.alphas_cumprod
    timesteps = schedule.inference_timesteps(num_inference_steps).tolist()  # e.g. [999, 749, 499, 249]
    steps = list(zip(timesteps, timesteps[1:] + [-1]))  # (t, t_prev) pairs, the last lands on t = -1
    x, x0_last, t_last = x_T, None, None
    for i, (t, t_prev) in enumerate(_progress(steps, progress, "DPM-Solver++(2M)")):
        x0 = denoise(x, torch.full((x.shape[0],), t, dtype=_time_dtype(x), device=x.device))  # t as float (B,)
        if callback is not None:
            callback(i, t, x, x0)
        second = solver_order == 2 and x0_last is not None and t_prev != -1
        x = dpmpp_2m_step(x0, x, t, t_prev, abar, x0_last if second else None, t_last if second else None)
        x0_last, t_last = x0, t
    return x


# ------------------------------------------------------------------------ Karras et al. (EDM) samplers
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
    last step, to sigma = 0, EDM Algorithm 1 line 6). sigma_min/sigma_max default to the schedule's
    sigma_0 / sigma_{T-1} (the range the network was trained on). The loop runs in EDM space:
    x_edm = x_vp * sqrt(1 + sigma^2) at the start, and denoise sees x_vp = x_edm / sqrt(1 + sigma^2), t(sigma).
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
    sigma_min, sigma_max = lo if sigma_min is None else sigma_min, hi if sigma_max is None else sigma_max
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

    x = x_T * math.sqrt(1 + sigmas[0] ** 2)  # x_edm at sigma_max: x_T / sqrt(abar_{T-1})
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


def nfe(sampler: str, num_inference_steps: int) -> int:
    """Network evaluations per image (one classifier-free-guidance pair = one batched evaluation).

    ddpm, ddim, dpmpp_2m, euler: n. heun: 2n - 1 (two per step, one on the last step to sigma = 0).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    if sampler in ("ddpm", "ddim", "dpmpp_2m", "euler"):
        return num_inference_steps
    if sampler == "heun":
        return 2 * num_inference_steps - 1
    raise ValueError(f"sampler must be one of ('ddpm', 'ddim') + {SAMPLERS}, got {sampler!r}")
