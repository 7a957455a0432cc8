"""Gaussian diffusion: noise schedules, the forward process and the DDPM / DDIM samplers.

Every Imagen stage (Saharia et al. 2022, §2.1-2.4) is a diffusion model; this file is the maths they share.
The networks only ever see a noisy image x_t and its timestep t.

Forward process (DDPM, Ho et al. 2020). Pick betas beta_0..beta_{T-1}; with alpha_t = 1 - beta_t and
alpha_bar_t = alpha_0 * ... * alpha_t, noising has a closed form (DDPM eq. 4):

    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps,        eps ~ N(0, I)

Timestep convention: DDPM indexing, t in [0, T-1] and `alphas_cumprod[t]` is alpha_bar after t+1 noising
steps. `t_prev = -1` names the clean image (alpha_bar = 1): it is where the last sampling step lands.
Step functions take `t`, `t_prev` as Python ints or LongTensors of shape (B,) (one timestep per sample).

What the network predicts (`prediction_type`, diffusers' names): "epsilon" (the noise), "sample" (x_0) or
"v_prediction" (v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0, Salimans & Ho 2022). Given x_t, any one
of them fixes the other two, so the samplers always work with the pair (x_0, eps).

Reverse process. DDPM (ancestral): draw x_{t'} from the Gaussian posterior q(x_{t'} | x_t, x_0) (DDPM eq. 6-7),
with x_0 replaced by the model's prediction. DDIM (Song et al. 2021, eq. 12): a family of samplers indexed by
eta in [0, 1]; eta = 0 is deterministic and needs 10-50x fewer steps than DDPM's 1000 (DDIM paper).
Imagen adds two tricks (§2.2-2.3): classifier-free guidance, which extrapolates from the unconditional to the
conditional prediction, and dynamic thresholding, which keeps the predicted x_0 inside [-1, 1] without
saturating it when the guidance weight is large.

Map: linear/cosine_beta_schedule -> NoiseSchedule -> as_timesteps, extract -> q_sample, x0/eps/v conversions,
training_target -> min_snr_weight, diffusion_loss (DDPM Algorithm 1) -> posterior -> thresholding, classifier_free_guidance ->
ddpm_step, ddim_step -> check_sampling_options, sample_loop (DDPM Algorithm 2).
The option names (PREDICTION_TYPES, BETA_SCHEDULES, SAMPLERS, THRESHOLDING_MODES) are defined here and only here.
Schedule values stay float64 on the CPU; every function does its schedule arithmetic in float64 there and
casts the result to the dtype and device of the images (MPS, for one, has no float64).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_PREDICTION_ALIASES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
THRESHOLDING_MODES = ("none", "static", "dynamic")
ODE_SAMPLERS = ("dpmpp_2m", "dpmpp_2m_karras", "euler", "heun")  # implemented in samplers.py
SAMPLERS = ("ddim", "ddpm") + ODE_SAMPLERS
BETA_SCHEDULES = ("linear", "cosine")


# ----------------------------------------------------------------------------------------- noise schedules
def _check_num_train_timesteps(num_train_timesteps: int) -> None:
    T = num_train_timesteps
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")


def linear_beta_schedule(num_train_timesteps: int) -> Tensor:
    """DDPM's betas, linear from 1e-4 to 0.02 at T = 1000, rescaled by 1000/T so every T traces the same curve.

    The rescaled end point 0.02 * 1000/T reaches 1 at T = 20 (and exceeds it below), which would make
    alpha_bar = 0 and every sample NaN; betas are therefore capped at 0.999. Returns float64, shape (T,).
    """
    _check_num_train_timesteps(num_train_timesteps)
    scale = 1000.0 / num_train_timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, num_train_timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999)


def cosine_beta_schedule(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021, eq. 17) cosine schedule: alpha_bar follows cos^2, betas capped at max_beta.

    alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2); s keeps beta_0 from being
    vanishingly small. Returns float64, shape (T,).
    """
    _check_num_train_timesteps(num_train_timesteps)
    if not s > 0:
        raise ValueError(f"s (the cosine schedule's offset) must be > 0, got {s}; the paper uses 0.008")
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}; the paper uses 0.999")
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps  # (T+1,) t/T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2)
    betas = 1 - f[1:] / f[:-1]  # beta_t = 1 - alpha_bar(t+1) / alpha_bar(t)
    return betas.clamp(max=max_beta)  # the last beta is exactly 1 (f(T) = 0) without the cap


class NoiseSchedule:
    """The betas and the quantities derived from them; float64 tensors on the CPU, shape (T,) each."""

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "cosine"):
        _check_num_train_timesteps(num_train_timesteps)
        if beta_schedule == "linear":
            betas = linear_beta_schedule(num_train_timesteps)
        elif beta_schedule == "cosine":
            betas = cosine_beta_schedule(num_train_timesteps)
        else:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.betas = betas
        self.alphas = 1 - betas  # alpha_t = 1 - beta_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # alpha_bar_t = prod_{s<=t} alpha_s
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])  # (T,) alpha_bar_{t-1}, 1 at t=0
        # "fixed small" variance: beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)   (DDPM eq. 7)
        self.posterior_variance = betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    def inference_timesteps(self, num_inference_steps: int) -> torch.LongTensor:
        """The timesteps a sampler visits: decreasing, evenly spaced, the first is T-1.

        t_i = T - 1 - floor(i * T / n), i = 0..n-1: each step covers T/n noising steps including the last
        jump to t_prev = -1 (diffusers' timestep_spacing="trailing"; Lin et al. 2023 show that the
        "leading" spacing, which never visits T-1, hurts). n = T gives T-1, ..., 0; n = 1 gives [T-1].
        """
        T = self.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps must be an int in [1, num_train_timesteps={T}], "
                             f"got {num_inference_steps!r}")
        i = torch.arange(num_inference_steps)
        return T - 1 - torch.div(i * T, num_inference_steps, rounding_mode="floor")

    def __repr__(self) -> str:
        return (f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, "
                f"beta_schedule={self.beta_schedule!r})")


# --------------------------------------------------------------------------------- indexing the schedule
def as_timesteps(t: int | Tensor, batch_size: int, name: str = "t", low: int = 0, high: int | None = None) -> Tensor:
    """Check a timestep argument once, at a public entry point: int or LongTensor (B,) -> LongTensor (B,) on the CPU.

    Values must lie in [low, high]; the schedule functions below then index with it without checking again.
    """
    t = torch.as_tensor(t).detach().to("cpu")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an int or an integer tensor, got dtype {t.dtype}")
    t = t.long().reshape(-1).expand(batch_size) if t.numel() == 1 else t.long().reshape(-1)  # (B,)
    if t.numel() != batch_size:
        raise ValueError(f"{name} must hold one timestep per sample ({batch_size}), got {t.numel()}")
    if (t < low).any() or (high is not None and (t > high).any()):
        raise ValueError(f"{name} must be in [{low}, {high}], got {t.tolist()}")
    return t


def _as_x(coef: Tensor, x: Tensor) -> Tensor:
    """float64 (B,) -> (B, 1, ..., 1) in x's dtype and device, ready to broadcast against x."""
    return coef.reshape(-1, *([1] * (x.dim() - 1))).to(device=x.device, dtype=x.dtype)  # (B, 1, ..., 1)


def extract(values: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """values[t] per sample, as (B, 1, ..., 1) in x's dtype and device: a plain gather and reshape.
    values (T,) float64 on the CPU; t a LongTensor (B,) already checked (see as_timesteps)."""
    return _as_x(values[t.cpu()], x)


def _abar(alphas_cumprod: Tensor) -> Tensor:
    """alpha_bar in float64 on the CPU, where the schedule arithmetic is done before casting to x's dtype
    (1 - abar in float32 loses a third of its digits when abar_0 = 0.99996)."""
    return alphas_cumprod.detach().to("cpu", torch.float64)


def _alpha_bars(alphas_cumprod: Tensor, t, t_prev, batch_size: int) -> tuple[Tensor, Tensor]:
    """(alpha_bar_t, alpha_bar_{t_prev}) as float64 (B,), with alpha_bar_{-1} = 1; checks t_prev < t."""
    abar = _abar(alphas_cumprod)
    T = len(abar)
    t = as_timesteps(t, batch_size, "t", 0, T - 1)
    t_prev = as_timesteps(t_prev, batch_size, "t_prev", -1, T - 2)
    if (t_prev >= t).any():
        raise ValueError(f"t_prev must be < t (sampling goes from noisy to clean), got t={t.tolist()}, "
                         f"t_prev={t_prev.tolist()}")
    abar_padded = torch.cat([torch.ones(1, dtype=torch.float64), abar])  # (T+1,) index 0 is t = -1
    return abar_padded[t + 1], abar_padded[t_prev + 1]


# ------------------------------------------------------------------- forward process and parameterisations
def _sqrt_abars(alphas_cumprod: Tensor, t, x: Tensor) -> tuple[Tensor, Tensor]:
    """(sqrt(abar_t), sqrt(1 - abar_t)), each (B, 1, ..., 1) like x; t is checked here, once per public call."""
    abar = _abar(alphas_cumprod)
    t = as_timesteps(t, x.shape[0], "t", 0, len(abar) - 1)
    return extract(abar.sqrt(), t, x), extract((1 - abar).sqrt(), t, x)


def q_sample(x0: Tensor, t, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Noise x0 to timestep t in one go."""
    a, b = _sqrt_abars(alphas_cumprod, t, x0)  # a = sqrt(abar_t), b = sqrt(1 - abar_t)
    return a * x0 + b * noise  # x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps   (DDPM eq. 4)


def x0_from_eps(x_t: Tensor, t, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The clean image implied by x_t and a noise estimate."""
    abar = _abar(alphas_cumprod)
    t = as_timesteps(t, x_t.shape[0], "t", 0, len(abar) - 1)
    c_x = extract((1 / abar).sqrt(), t, x_t)  # 1 / sqrt(abar): up to ~2e4 at t = T-1 (cosine)
    c_eps = extract((1 / abar - 1).sqrt(), t, x_t)  # sqrt(1 - abar) / sqrt(abar)
    return c_x * x_t - c_eps * eps  # x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)   (eq. 4 solved for x_0)


def eps_from_x0(x_t: Tensor, t, x0: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The noise implied by x_t and a clean-image estimate."""
    a, b = _sqrt_abars(alphas_cumprod, t, x_t)
    return (x_t - a * x0) / b  # eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)


def v_from_x0_eps(x0: Tensor, eps: Tensor, t, alphas_cumprod: Tensor) -> Tensor:
    """The "velocity" target of v-prediction (Salimans & Ho 2022, progressive distillation)."""
    a, b = _sqrt_abars(alphas_cumprod, t, x0)
    return a * eps - b * x0  # v = sqrt(abar) eps - sqrt(1 - abar) x_0   (Salimans & Ho 2022)


def canonical_prediction_type(prediction_type: str) -> str:
    """'epsilon' | 'sample' | 'v_prediction', also accepting the short aliases 'eps', 'x0', 'v'."""
    name = _PREDICTION_ALIASES.get(prediction_type, prediction_type)
    if name not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES} (or the aliases "
                         f"{tuple(_PREDICTION_ALIASES)}), got {prediction_type!r}")
    return name


def x0_eps_from_model_output(model_output: Tensor, x_t: Tensor, t, alphas_cumprod: Tensor,
                             prediction_type: str) -> tuple[Tensor, Tensor]:
    """Turn what the network predicts into the pair (x_0, eps) that the samplers use."""
    kind = canonical_prediction_type(prediction_type)
    if kind == "epsilon":
        eps = model_output
        return x0_from_eps(x_t, t, eps, alphas_cumprod), eps
    if kind == "sample":
        x0 = model_output
        return x0, eps_from_x0(x_t, t, x0, alphas_cumprod)
    a, b = _sqrt_abars(alphas_cumprod, t, x_t)  # a^2 + b^2 = 1 inverts v = a eps - b x_0, x_t = a x_0 + b eps:
    x0 = a * x_t - b * model_output  # x_0 = sqrt(abar) x_t - sqrt(1 - abar) v
    eps = b * x_t + a * model_output  # eps = sqrt(1 - abar) x_t + sqrt(abar) v
    return x0, eps


def training_target(x0: Tensor, noise: Tensor, t, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """What the network is regressed onto (with MSE) for x_t = q_sample(x0, t, noise)."""
    kind = canonical_prediction_type(prediction_type)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return v_from_x0_eps(x0, noise, t, alphas_cumprod)


def min_snr_weight(t: Tensor, alphas_cumprod: Tensor, prediction_type: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), float64 (B,): the x_0-space loss weight min(SNR_t, gamma),
    written in the space the network predicts. SNR_t = abar_t / (1 - abar_t)."""
    abar = _abar(alphas_cumprod)[t.cpu()]
    snr = abar / (1 - abar)  # SNR_t = alpha_bar_t / (1 - alpha_bar_t)
    w = snr.clamp(max=gamma)  # min(SNR, gamma): x_0-prediction
    kind = canonical_prediction_type(prediction_type)
    if kind == "epsilon":
        return w / snr  # eps-loss = SNR * x0-loss, so min(SNR, gamma) / SNR
    if kind == "v_prediction":
        return w / (snr + 1)  # v-loss = (SNR + 1) * x0-loss, so min(SNR, gamma) / (SNR + 1)
    return w


def diffusion_loss(model_fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor, alphas_cumprod: Tensor,
                   prediction_type: str = "epsilon", t: Tensor | None = None, noise: Tensor | None = None,
                   generator: torch.Generator | None = None, min_snr_gamma: float | None = None) -> Tensor:
    """DDPM Algorithm 1 (training) on one batch x0 (B, C, H, W) in [-1, 1]: the loss to take a gradient step on.

    model_fn(x_t, t) -> prediction in `prediction_type` space. t and noise may be given (the cascade draws all of a
    step's randomness up front, for exact resume and DDP); otherwise they are drawn here from `generator`.
    min_snr_gamma: weight each sample by min_snr_weight (e.g. 5.0); None = the plain MSE of DDPM and Imagen.
    """
    if t is None:  # Algorithm 1, line 3: t ~ Uniform({1, ..., T})  (0-based here: {0, ..., T-1})
        gdev = generator.device if generator is not None else x0.device
        t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator, device=gdev).to(x0.device)
    if noise is None:  # Algorithm 1, line 4: eps ~ N(0, I)
        noise = _randn_like(x0, generator)
    x_t = q_sample(x0, t, noise, alphas_cumprod)  # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (DDPM eq. 4)
    target = training_target(x0, noise, t, alphas_cumprod, prediction_type)  # eps, x_0 or v
    pred = model_fn(x_t, t)
    if min_snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())  # Algorithm 1, line 5: || target - f(x_t, t) ||^2
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return (min_snr_weight(t, alphas_cumprod, prediction_type, min_snr_gamma).to(per_sample) * per_sample).mean()


# ------------------------------------------------------------------------------------------ the posterior
def posterior_mean_variance(x0: Tensor, x_t: Tensor, t, t_prev,
                            alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t_prev} | x_t, x_0) for any t_prev < t (t_prev = -1: the clean image).

    Skipping from t to t_prev is one Gaussian step with beta' = 1 - abar_t / abar_prev, so DDPM eq. 7 holds with
    beta_t -> beta' and alpha_t -> 1 - beta'. Returns mean (like x_t) and variance (B, 1, ..., 1).
    """
    abar_t, abar_prev = _alpha_bars(alphas_cumprod, t, t_prev, x_t.shape[0])  # float64 (B,) each
    beta = 1 - abar_t / abar_prev  # beta' = 1 - abar_t / abar_prev
    c_x0 = abar_prev.sqrt() * beta / (1 - abar_t)  # sqrt(abar_prev) beta' / (1 - abar_t)
    c_xt = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)  # sqrt(alpha') (1 - abar_prev) / (1 - abar_t)
    variance = beta * (1 - abar_prev) / (1 - abar_t)  # beta_tilde = beta' (1 - abar_prev) / (1 - abar_t)
    return _as_x(c_x0, x_t) * x0 + _as_x(c_xt, x_t) * x_t, _as_x(variance, x_t)


# ----------------------------------------------------------------------------- thresholding and guidance
def static_threshold(x0: Tensor) -> Tensor:
    """Clip the predicted x_0 to the data range [-1, 1] (Imagen §2.3, "static thresholding")."""
    return x0.clamp(-1, 1)


def _check_dynamic_thresholding(dynamic_thresholding_ratio: float, sample_max_value: float | None) -> None:
    if not 0 < dynamic_thresholding_ratio <= 1:
        raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {dynamic_thresholding_ratio}; "
                         "Imagen-style code uses 0.9-0.995")
    if sample_max_value is not None and not sample_max_value >= 1:
        raise ValueError(f"sample_max_value must be >= 1 or None (no cap), got {sample_max_value!r}; "
                         "values inside [-1, 1] are never rescaled")


def dynamic_threshold(x0: Tensor, dynamic_thresholding_ratio: float = 0.95,
                      sample_max_value: float | None = None) -> Tensor:
    """Imagen's dynamic thresholding (§2.3), per sample.

    s = max(1, quantile_p(|x_0|)) with p = dynamic_thresholding_ratio, then x_0 <- clip(x_0, -s, s) / s:
    samples already in [-1, 1] are untouched, over-saturated ones are pulled back inside instead of clipped.
    diffusers has an option of the same name with p = 0.995 and, additionally, s <= sample_max_value with
    sample_max_value = 1.0 by default, which makes its "dynamic" identical to static clipping. The paper has
    no cap, so ours is None (off) by default; pass sample_max_value to cap s as diffusers does.
    """
    _check_dynamic_thresholding(dynamic_thresholding_ratio, sample_max_value)
    flat = x0.detach().abs().reshape(x0.shape[0], -1).float()  # (B, C*H*W); quantile needs float32/64
    s = torch.quantile(flat, dynamic_thresholding_ratio, dim=1).clamp(min=1)  # (B,) s = max(1, q_p(|x_0|))
    if sample_max_value is not None:
        s = s.clamp(max=sample_max_value)  # s = min(s, sample_max_value)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))  # (B, 1, ..., 1)
    return x0.clamp(-s, s) / s  # x_0 = clip(x_0, -s, s) / s


def apply_thresholding(x0: Tensor, thresholding: str = "dynamic", dynamic_thresholding_ratio: float = 0.95,
                       sample_max_value: float | None = None) -> Tensor:
    """thresholding: "none" (x_0 as predicted), "static" (clip to [-1, 1]) or "dynamic" (dynamic_threshold)."""
    if thresholding == "none":
        return x0
    if thresholding == "static":
        return static_threshold(x0)
    if thresholding == "dynamic":
        return dynamic_threshold(x0, dynamic_thresholding_ratio, sample_max_value)
    raise ValueError(f"thresholding must be one of {THRESHOLDING_MODES}, got {thresholding!r}")


def classifier_free_guidance(pred_cond: Tensor, pred_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Ho & Salimans (2022) as written in Imagen §2.2: pred_uncond + w (pred_cond - pred_uncond).

    w = guidance_scale (a number): 0 is unconditional, 1 conditional, > 1 follows the text more closely at the
    cost of diversity. Works on eps, x_0 or v predictions alike: at a fixed x_t each is linear in the others.
    """
    if not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0 (0 = unconditional, 1 = conditional), "
                         f"got {guidance_scale}")
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)  # eps~ = eps_u + w (eps_c - eps_u)


# ------------------------------------------------------------------------------------------- one step
def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) like x, made on the generator's device (a CPU generator cannot fill a CUDA tensor), then moved."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _check_eta(eta: float) -> None:
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")


def ddpm_step(x0: Tensor, x_t: Tensor, t, t_prev, alphas_cumprod: Tensor,
              generator: torch.Generator | None = None) -> Tensor:
    """Ancestral sampling (DDPM Algorithm 2): x_{t_prev} ~ N(posterior mean, beta_tilde); no noise at t_prev = -1."""
    mean, variance = posterior_mean_variance(x0, x_t, t, t_prev, alphas_cumprod)
    last = as_timesteps(t_prev, x_t.shape[0], "t_prev", -1, len(alphas_cumprod) - 2) == -1  # (B,) landing on x_0?
    nonzero = _as_x((~last).double(), x_t)  # (B, 1, ..., 1): no noise is added to the final image
    return mean + nonzero * variance.sqrt() * _randn_like(x_t, generator)  # x_prev = mu~ + sigma z


def ddim_step(x0: Tensor, eps: Tensor, x_t: Tensor, t, t_prev, alphas_cumprod: Tensor, eta: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12). eta = 0: deterministic; eta = 1: the DDPM posterior variance."""
    _check_eta(eta)
    abar_t, abar_prev = _alpha_bars(alphas_cumprod, t, t_prev, x_t.shape[0])  # float64 (B,) each
    # sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)   (DDIM eq. 16)
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    c_eps = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()  # sqrt(1 - abar_prev - sigma^2), >= 0 up to rounding
    x_prev = _as_x(abar_prev.sqrt(), x_t) * x0 + _as_x(c_eps, x_t) * eps  # "predicted x_0" + "direction to x_t"
    if eta > 0:
        x_prev = x_prev + _as_x(sigma, x_t) * _randn_like(x_t, generator)  # + sigma_t z   (DDIM eq. 12)
    return x_prev


# ----------------------------------------------------------------------------------------- the whole loop
def check_number(name: str, value) -> None:
    """TypeError unless value is a real number (one, or a list with one per stage), ValueError if not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number (one, or a list with one per stage), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def check_sampling_options(sampler: str = "ddim", eta: float = 0.0, thresholding: str = "dynamic",
                           dynamic_thresholding_ratio: float = 0.95, sample_max_value: float | None = None) -> None:
    """The one place where the sampler settings are validated (sample_loop and sampling.StageSettings call it)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    check_number("eta", eta)
    check_number("dynamic_thresholding_ratio", dynamic_thresholding_ratio)
    _check_eta(eta)
    if thresholding not in THRESHOLDING_MODES:
        raise ValueError(f"thresholding must be one of {THRESHOLDING_MODES}, got {thresholding!r}")
    _check_dynamic_thresholding(dynamic_thresholding_ratio, sample_max_value)


@torch.no_grad()
def sample_loop(model_fn: Callable[[Tensor, Tensor], Tensor], x_T: Tensor, schedule: NoiseSchedule,
                num_inference_steps: int, sampler: str = "ddim", eta: float = 0.0,
                prediction_type: str = "epsilon", thresholding: str = "dynamic",
                dynamic_thresholding_ratio: float = 0.95, sample_max_value: float | None = None,
                generator: torch.Generator | None = None,
                callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
                progress: bool | str = False) -> Tensor:
    """DDPM Algorithm 2 (sampling): denoise x_T (pure noise, (B, ...)) into x_0 in num_inference_steps model calls.

    model_fn(x_t, t) -> prediction in `prediction_type` space, with t a LongTensor (B,) on x_T's device;
    classifier-free guidance, text conditioning etc. live inside model_fn (see classifier_free_guidance).
    Per step: output -> (x_0, eps) -> threshold x_0 -> [DDIM: eps recomputed from the thresholded x_0, so the
    step stays consistent with x_t] -> step to t_prev. callback(step_index, t, x_t, x0_pred), t an int, is
    called after thresholding, for plots of how the prediction sharpens. eta is used by DDIM only; the DDPM
    sampler always uses the "fixed small" posterior variance. Runs under torch.no_grad().
    """
    check_sampling_options(sampler, eta, thresholding, dynamic_thresholding_ratio, sample_max_value)
    canonical_prediction_type(prediction_type)  # fail before the first model call, not after it
    if sampler in ODE_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is an ODE solver of samplers.py: call samplers.sample(...) (same "
                         "arguments, every sampler) or sample_cascade(sampler=...); sample_loop runs 'ddim' and 'ddpm'")
    abar = schedule.alphas_cumprod
    timesteps = schedule.inference_timesteps(num_inference_steps).tolist()  # e.g. [999, 749, 499, 249]
    steps = list(zip(timesteps, timesteps[1:] + [-1]))  # (t, t_prev) pairs, the last lands on t_prev = -1
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=progress if isinstance(progress, str) else f"{sampler} sampling", leave=False)
    x, batch = x_T, x_T.shape[0]  # Algorithm 2, line 1: x_T ~ N(0, I)
    for i, (t, t_prev) in enumerate(steps):  # line 2: for t = T, ..., 1 (num_inference_steps of them)
        t_batch = torch.full((batch,), t, dtype=torch.long, device=x.device)  # (B,)
        x0, eps = x0_eps_from_model_output(model_fn(x, t_batch), x, t, abar, prediction_type)
        x0 = apply_thresholding(x0, thresholding, dynamic_thresholding_ratio, sample_max_value)  # Imagen §2.3
        if callback is not None:
            callback(i, t, x, x0)
        if sampler == "ddim":  # DDIM eq. 12 (deterministic for eta = 0)
            x = ddim_step(x0, eps_from_x0(x, t, x0, abar), x, t, t_prev, abar, eta=eta, generator=generator)
        else:  # lines 3-4: z ~ N(0, I) unless landing on x_0; x_{t-1} = mu~(x_t, x_0) + sigma_t z
            x = ddpm_step(x0, x, t, t_prev, abar, generator=generator)
    return x  # line 6: return x_0
