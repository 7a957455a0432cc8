"""Tests for minimagen.samplers: DPM-Solver++(2M), Karras Euler / Heun, the sigma <-> timestep map, NFE.

Reference values come from the papers' equations, written again here as plain float64 loops (Lu et al. 2022
Algorithm 2; Karras et al. 2022 eq. 5 and Algorithms 1-2), with their own log-sigma interpolation (numpy), never
from running the code under test.
"""
import math

import numpy as np
import pytest
import torch

from minimagen.diffusion import (
    ODE_SAMPLERS, NoiseSchedule, classifier_free_guidance, ddim_step, eps_from_x0, q_sample, sample_loop,
    x0_eps_from_model_output,
)
from minimagen.samplers import (
    default_sigma_range, dpmpp_2m_sample, dpmpp_2m_step, euler_step, karras_sample, karras_sigmas,
    make_denoiser, nfe, run_sampler, schedule_sigmas, sigma_to_t, t_to_sigma, x0_from_model_output,
)

F64 = torch.float64
SCHEDULES = [NoiseSchedule(1000, "cosine"), NoiseSchedule(100, "linear")]


def _data(seed=0, shape=(2, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=F64) * 2 - 1  # inside [-1, 1]: thresholding is a no-op
    return x0, torch.randn(shape, generator=g, dtype=F64)


def _abar_at(t, s: NoiseSchedule) -> np.ndarray:
    """abar at fractional t, independently: log sigma interpolated linearly in t, abar = 1 / (1 + sigma^2)."""
    abar = s.alphas_cumprod.numpy()
    log_sigma = np.interp(np.asarray(t, dtype=np.float64), np.arange(len(abar)), 0.5 * np.log((1 - abar) / abar))
    return 1 / (1 + np.exp(2 * log_sigma))


def _t_of_sigma(sigma: float, s: NoiseSchedule) -> float:
    abar = s.alphas_cumprod.numpy()
    return float(np.interp(math.log(sigma), 0.5 * np.log((1 - abar) / abar), np.arange(len(abar))))


def _reference_karras_sigmas(n, s, rho=7.0):
    """EDM eq. 5 over EDM's [0.002, 80] clipped to the schedule's sigma range, plus sigma_n = 0."""
    sig = (s.alphas_cumprod.numpy() ** -1 - 1) ** 0.5
    smin, smax = max(0.002, sig[0]), min(80.0, sig[-1])
    sigmas = [(smax ** (1 / rho) + (i / (n - 1) if n > 1 else 0) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
              for i in range(n)] + [0.0]
    sigmas[0], sigmas[n - 1] = smax, smin if n > 1 else smax  # eq. 5 at i = 0 and n - 1, without rounding
    return sigmas


def _linear_denoiser(T):
    """A fixed, non-oracle denoiser: x0 = (0.5 + 0.5 t / T) * M x, M a fixed channel-mixing matrix."""
    M = torch.tensor([[0.6, -0.2, 0.1], [0.3, 0.5, -0.4], [-0.1, 0.2, 0.7]], dtype=F64)

    def denoise(x, t):
        scale = (0.5 + 0.5 * t.double() / T).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return scale * torch.einsum("dc,bchw->bdhw", M, x)
    return denoise


# ----------------------------------------------------------------------------- sigma <-> timestep
@pytest.mark.parametrize("s", SCHEDULES, ids=["cosine1000", "linear100"])
def test_sigma_and_timestep_round_trip_on_schedule_points(s):
    abar = s.alphas_cumprod
    t = torch.arange(s.num_train_timesteps, dtype=F64)
    sigma = t_to_sigma(t, s)
    assert torch.allclose(sigma, ((1 - abar) / abar).sqrt(), rtol=1e-12, atol=0)  # sigma = sqrt((1 - abar) / abar)
    assert torch.allclose(sigma_to_t(sigma, s), t, rtol=0, atol=1e-9)
    assert t_to_sigma(-1.0, s).item() == 0 and sigma_to_t(0.0, s).item() == -1  # the clean image


def test_fractional_timestep_is_geometric_mean_of_neighbouring_sigmas():
    s = NoiseSchedule(1000)
    sig = schedule_sigmas(s)
    assert t_to_sigma(500.5, s).item() == pytest.approx(math.sqrt(sig[500] * sig[501]), rel=1e-12)
    assert t_to_sigma(10.25, s).item() == pytest.approx(sig[10].item() ** 0.75 * sig[11].item() ** 0.25, rel=1e-12)
    assert sigma_to_t(math.sqrt(sig[500] * sig[501]), s).item() == pytest.approx(500.5, abs=1e-9)


def test_default_karras_range_is_edm_range_clipped_to_the_schedule():
    cosine, linear100 = SCHEDULES
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  (cosine schedule)
    abar_0 = f(1) / f(0)  # sigma_0 = sqrt((1 - abar_0) / abar_0) = 0.0064 > 0.002; sigma_999 ~ 2e4 > 80
    assert default_sigma_range(cosine) == pytest.approx((math.sqrt((1 - abar_0) / abar_0), 80.0), rel=1e-9)
    assert default_sigma_range(linear100)[0] == pytest.approx(math.sqrt(1e-3 / (1 - 1e-3)))  # beta_0 = 1e-4 * 10


def test_karras_sigmas_for_n3_by_hand():
    sigmas = karras_sigmas(3, 0.1, 10.0, rho=7.0).tolist()
    middle = ((10.0 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7  # i/(n-1) = 1/2
    assert sigmas == pytest.approx([10.0, middle, 0.1, 0.0], rel=1e-12)  # first sigma_max, last nonzero sigma_min
    assert karras_sigmas(3, 0.1, 10.0, rho=1.0).tolist() == pytest.approx([10.0, 5.05, 0.1, 0.0], rel=1e-12)
    assert karras_sigmas(1, 0.1, 10.0).tolist() == [10.0, 0.0]


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_x0_from_model_output_at_integer_t_matches_diffusion(prediction_type):
    s = NoiseSchedule(1000)
    out, x_t = _data(1)
    t = torch.tensor([0, 999])
    expected, _ = x0_eps_from_model_output(out, x_t, t, s.alphas_cumprod, prediction_type)
    assert torch.allclose(x0_from_model_output(out, x_t, t.double(), s, prediction_type), expected,
                          rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------- oracle models
def _oracle_model(x0, s, prediction_type):
    """model_fn(x_t, t) giving the exact target for x0 at (fractional) t, in `prediction_type` space."""
    def model_fn(x_t, t):
        abar = torch.from_numpy(_abar_at(t.cpu().numpy(), s)).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()  # eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)
        return {"epsilon": eps, "sample": x0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction_type]
    return model_fn


SAMPLER_RUNS = {
    "dpmpp_2m": lambda d, x, s, n, **kw: dpmpp_2m_sample(d, x, s, n, **kw),
    "dpmpp_2m_karras": lambda d, x, s, n, **kw: dpmpp_2m_sample(d, x, s, n, timestep_spacing="karras", **kw),
    "euler": lambda d, x, s, n, **kw: karras_sample(d, x, s, n, method="euler", **kw),
    "heun": lambda d, x, s, n, **kw: karras_sample(d, x, s, n, method="heun", **kw),
    "heun_churn": lambda d, x, s, n, **kw: karras_sample(d, x, s, n, method="heun", s_churn=5.0,
                                                         generator=torch.Generator().manual_seed(0), **kw),
}


@pytest.mark.parametrize("num_inference_steps", [1, 3, 10])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("sampler", list(SAMPLER_RUNS))
def test_every_sampler_with_an_oracle_model_returns_x0(sampler, prediction_type, num_inference_steps):
    for s in SCHEDULES:
        x0, x_T = _data(2)
        denoise = make_denoiser(_oracle_model(x0, s, prediction_type), s, prediction_type, thresholding="none")
        out = SAMPLER_RUNS[sampler](denoise, x_T, s, num_inference_steps)
        assert torch.allclose(out, x0, atol=1e-8), (s, (out - x0).abs().max())


def test_guided_denoiser_returns_the_guided_data_prediction():
    # eps is linear in x0 at fixed x_t, so guiding two eps-oracles gives x0_u + w (x0_c - x0_u)   (Imagen §2.2)
    s = NoiseSchedule(1000)
    (x0_c, x_T), (x0_u, _) = _data(3), _data(4)
    cond, uncond = _oracle_model(x0_c, s, "epsilon"), _oracle_model(x0_u, s, "epsilon")
    model_fn = lambda x, t: classifier_free_guidance(cond(x, t), uncond(x, t), 3.0)  # noqa: E731
    denoise = make_denoiser(model_fn, s, "epsilon", thresholding="none")
    for sampler in SAMPLER_RUNS:
        out = SAMPLER_RUNS[sampler](denoise, x_T, s, 6)
        assert torch.allclose(out, x0_u + 3.0 * (x0_c - x0_u), atol=1e-8), sampler


# ------------------------------------------------------------------------------- DPM-Solver++ = DDIM
@pytest.mark.parametrize("t, t_prev", [(999, 749), (500, 499), (249, 0), (249, -1), (0, -1)])
def test_first_order_dpmpp_step_equals_ddim_eta0_step(t, t_prev):
    abar = NoiseSchedule(1000).alphas_cumprod
    x0, x_t = _data(5)
    sigma = lambda t: 0.0 if t == -1 else math.sqrt((1 - abar[t]) / abar[t])  # noqa: E731
    ddim = ddim_step(x0, eps_from_x0(x_t, t, x0, abar), x_t, t, t_prev, abar, eta=0.0)
    assert torch.allclose(dpmpp_2m_step(x0, x_t, sigma(t), sigma(t_prev)), ddim, atol=1e-10)


@pytest.mark.parametrize("num_inference_steps", [1, 4, 25])
def test_first_order_dpmpp_loop_and_2m_first_step_equal_ddim(num_inference_steps):
    s = NoiseSchedule(1000)
    _, x_T = _data(6)
    model = _linear_denoiser(1000)  # predicts x0 directly ("sample"), from a float or a long t
    ddim_seen, dpm1_seen, dpm2_seen = [], [], []
    ddim = sample_loop(model, x_T, s, num_inference_steps, sampler="ddim", prediction_type="sample",
                       thresholding="none", callback=lambda i, t, x, x0: ddim_seen.append(x))
    dpm1 = dpmpp_2m_sample(model, x_T, s, num_inference_steps, solver_order=1,
                           callback=lambda i, t, x, x0: dpm1_seen.append(x))
    dpmpp_2m_sample(model, x_T, s, num_inference_steps, callback=lambda i, t, x, x0: dpm2_seen.append(x))
    assert torch.allclose(dpm1, ddim, atol=1e-10)
    for a, b in zip(dpm1_seen, ddim_seen):
        assert torch.allclose(a, b, atol=1e-10)
    if num_inference_steps > 1:  # x after the first step: 2M has no history yet, so it takes the DDIM step
        assert torch.allclose(dpm2_seen[1], ddim_seen[1], atol=1e-10)


def test_euler_in_edm_space_between_schedule_points_equals_ddim():
    # x_edm = x_vp / sqrt(abar); DDIM (eta = 0) is Euler's method for dx_edm/dsigma   (EDM §3, eq. 4 with s = 1)
    abar = NoiseSchedule(1000).alphas_cumprod
    x0, x_t = _data(7)
    for t, t_prev in [(999, 749), (300, 120)]:
        sig, sig_prev = math.sqrt((1 - abar[t]) / abar[t]), math.sqrt((1 - abar[t_prev]) / abar[t_prev])
        x_edm_prev = euler_step(x_t / abar[t].sqrt(), x0, sig, sig_prev)
        ddim = ddim_step(x0, eps_from_x0(x_t, t, x0, abar), x_t, t, t_prev, abar)
        assert torch.allclose(x_edm_prev * abar[t_prev].sqrt(), ddim, atol=1e-10)


# ------------------------------------------------------------------------------ plain references
def _reference_dpmpp_2m(denoise, x_T, ts, abars):
    """Lu et al. 2022, Algorithm 2, with Python floats: n timesteps ts, n + 1 abars (the last 1: the clean image)."""
    alpha = [math.sqrt(a) for a in abars]
    sigma = [math.sqrt(1 - a) for a in abars]
    lam = [math.log(a / s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]  # lambda = log(alpha / sigma)
    x, preds = x_T, []
    for i in range(len(ts)):
        preds.append(denoise(x, torch.full((x.shape[0],), float(ts[i]), dtype=F64)))
        h = lam[i + 1] - lam[i]
        if i == 0 or sigma[i + 1] == 0:
            D = preds[-1]
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = (1 + 1 / (2 * r)) * preds[-1] - 1 / (2 * r) * preds[-2]
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * (math.exp(-h) - 1) * D
    return x


def _reference_karras(denoise, x_T, s, n, heun, s_churn=0.0, generator=None, rho=7.0):
    """Karras et al. 2022: eq. 5 sigmas, Algorithm 2 (Algorithm 1 when s_churn = 0), in EDM space."""
    sigmas = _reference_karras_sigmas(n, s, rho)
    top = (1 / s.alphas_cumprod[-1].item() - 1) ** 0.5  # churn never goes above the schedule's largest sigma

    def D(x, sigma):
        return denoise(x / math.sqrt(1 + sigma**2), torch.full((x.shape[0],), _t_of_sigma(sigma, s), dtype=F64))

    x = x_T * math.sqrt(1 + sigmas[0] ** 2)
    for i in range(n):
        gamma = max(0.0, min(s_churn / n, math.sqrt(2) - 1, top / sigmas[i] - 1))
        sigma_hat = sigmas[i] * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigmas[i] ** 2) * torch.randn(x.shape, generator=generator, dtype=F64)
        d = (x - D(x, sigma_hat)) / sigma_hat
        x_next = x + (sigmas[i + 1] - sigma_hat) * d
        if heun and sigmas[i + 1] != 0:
            d2 = (x_next - D(x_next, sigmas[i + 1])) / sigmas[i + 1]
            x_next = x + (sigmas[i + 1] - sigma_hat) * (d / 2 + d2 / 2)
        x = x_next
    return x


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_dpmpp_2m_matches_the_plain_reference(n):
    s = NoiseSchedule(1000)
    _, x_T = _data(8)
    den = _linear_denoiser(1000)
    ts = [999 - (i * 1000) // n for i in range(n)]  # trailing: t_i = T - 1 - floor(i T / n)
    ref = _reference_dpmpp_2m(den, x_T, ts, [s.alphas_cumprod[t].item() for t in ts] + [1.0])
    assert torch.allclose(dpmpp_2m_sample(den, x_T, s, n), ref, atol=1e-10)
    sigmas = _reference_karras_sigmas(n, s)
    ref = _reference_dpmpp_2m(den, x_T, [_t_of_sigma(v, s) for v in sigmas[:-1]], [1 / (1 + v**2) for v in sigmas])
    assert torch.allclose(dpmpp_2m_sample(den, x_T, s, n, timestep_spacing="karras"), ref, atol=1e-10)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("method, s_churn", [("euler", 0.0), ("heun", 0.0), ("euler", 4.0), ("heun", 4.0)])
def test_karras_samplers_match_the_plain_reference(method, s_churn, n):
    s = NoiseSchedule(100, "linear")
    _, x_T = _data(9)
    den = _linear_denoiser(100)
    out = karras_sample(den, x_T, s, n, method=method, s_churn=s_churn, generator=torch.Generator().manual_seed(3))
    ref = _reference_karras(den, x_T, s, n, method == "heun", s_churn, torch.Generator().manual_seed(3))
    assert torch.allclose(out, ref, atol=1e-10)


# ------------------------------------------------------------------------------ thresholding, NFE
@pytest.mark.parametrize("thresholding", ["static", "dynamic"])
def test_samplers_with_thresholding_inside_denoise_end_finite_and_in_range(thresholding):
    s = NoiseSchedule(1000)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # float32, like real images
    wild = lambda x, t: 4.0 * x + 3.0  # noqa: E731  eps far from anything consistent: x0 = sqrt(1+s^2) x - s eps
    denoise = make_denoiser(wild, s, "epsilon", thresholding=thresholding)
    for sampler in SAMPLER_RUNS:
        out = SAMPLER_RUNS[sampler](denoise, x_T, s, 8)
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), sampler
        assert out.abs().max() <= 1 + 1e-5, sampler  # the last step returns a thresholded x0


@pytest.mark.parametrize("n", [1, 2, 7])
def test_denoise_calls_equal_nfe_and_callback_runs_once_per_step(n):
    s = NoiseSchedule(1000)
    _, x_T = _data(10)
    assert [nfe(k, n) for k in ("ddpm", "ddim") + ODE_SAMPLERS] == [n, n, n, n, n, 2 * n - 1]
    for sampler in ODE_SAMPLERS:
        calls, steps = [], []
        den = lambda x, t: (calls.append(t), torch.zeros_like(x))[1]  # noqa: E731
        run_sampler(sampler, den, x_T, s, n, callback=lambda i, t, x, x0: steps.append((i, t)))
        assert len(calls) == nfe(sampler, n) and [i for i, _ in steps] == list(range(n))
        assert all(c.dtype == F64 and c.shape == (2,) for c in calls)
        ts = [t for _, t in steps]
        if sampler == "dpmpp_2m":
            assert ts == s.inference_timesteps(n).tolist()
        else:
            expected = [_t_of_sigma(v, s) for v in _reference_karras_sigmas(n, s)[:-1]]
            assert ts == pytest.approx(expected, abs=1e-9) and ts[0] < 999  # starts at sigma_max = 80


def test_churn_uses_the_generator_deterministically():
    s = NoiseSchedule(100, "linear")
    _, x_T = _data(11)
    den = _linear_denoiser(100)
    run = lambda seed, churn: karras_sample(den, x_T, s, 5, s_churn=churn,  # noqa: E731
                                            generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0, 2.0), run(0, 2.0))
    assert not torch.allclose(run(0, 2.0), run(1, 2.0), atol=1e-3)
    assert torch.equal(run(0, 0.0), run(1, 0.0))  # no churn: deterministic, the generator is unused


# ------------------------------------------------------------------------------------ bad input
def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_bad_arguments_raise_value_errors_naming_them():
    s, x = NoiseSchedule(10), torch.zeros(2, 1, 2, 2)
    den = lambda x, t: x  # noqa: E731
    for fn in (dpmpp_2m_sample, karras_sample):
        _raises("num_inference_steps", fn, den, x, s, 0)
        _raises("num_inference_steps", fn, den, x, s, 11)
    _raises("solver_order", dpmpp_2m_sample, den, x, s, 2, solver_order=3)
    _raises("rho", karras_sample, den, x, s, 2, rho=0.0)
    _raises("rho", karras_sigmas, 3, 0.1, 10.0, rho=-1.0)
    _raises("s_churn", karras_sample, den, x, s, 2, s_churn=-1.0)
    _raises("method", karras_sample, den, x, s, 2, method="rk4")
    _raises("sigma_min", karras_sample, den, x, s, 2, sigma_min=1e-6)
    _raises("sigma_min", karras_sigmas, 3, 10.0, 0.1)
    _raises("sampler", nfe, "rk4", 3)
    _raises("num_inference_steps", nfe, "heun", 0)
    _raises("^t must", t_to_sigma, -0.5, s)
    _raises("^sigma must", sigma_to_t, 1e-9, s)
    _raises("thresholding", make_denoiser, den, s, "epsilon", thresholding="soft")
    _raises("prediction_type", make_denoiser, den, s, "score")
    _raises("first order", dpmpp_2m_step, x, x, 1.0, 0.0, x, 2.0)
    _raises("sigma_next", dpmpp_2m_step, x, x, 1.0, 1.0)
    _raises("sigma_last", dpmpp_2m_step, x, x, 1.0, 0.5, x, 0.9)
    _raises("timestep_spacing", dpmpp_2m_sample, den, x, s, 2, timestep_spacing="leading")
    _raises("sampler", run_sampler, "rk4", den, x, s, 2)


def test_every_sampler_runs_through_the_cascade_by_name_and_is_deterministic():
    """sample_cascade(sampler=...) dispatches each name of diffusion.SAMPLERS, with guidance and thresholding."""
    from minimagen.cascade import Cascade, tiny_cascade_config
    from minimagen.diffusion import SAMPLERS
    torch.manual_seed(0)
    cascade = Cascade(tiny_cascade_config((8, 16), text_embed_dim=64)).eval()
    embeds, mask = torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.bool)
    for sampler in SAMPLERS:
        def run():
            return cascade(text_embeds=embeds, text_mask=mask, sampler=sampler, num_inference_steps=3,
                           guidance_scale=[3.0, 1.0], thresholding=["dynamic", "static"], output_type="pt",
                           generator=torch.Generator().manual_seed(1), progress=False).images
        first = run()
        assert first.shape == (2, 3, 16, 16) and torch.isfinite(first).all(), sampler
        assert torch.equal(first, run()), sampler


def test_sample_runs_every_sampler_by_name_and_sample_loop_points_ode_names_to_it():
    s = NoiseSchedule(20)
    x_T = torch.randn(2, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    x0 = torch.full_like(x_T, 0.25)
    oracle = lambda x_t, t: x0  # noqa: E731 - predicts the clean image ("sample" prediction type)
    from minimagen.diffusion import SAMPLERS
    from minimagen.samplers import sample
    for sampler in SAMPLERS:
        out = sample(oracle, x_T, s, 4, sampler=sampler, prediction_type="sample", thresholding="none")
        torch.testing.assert_close(out, x0, atol=1e-8, rtol=0), sampler
    with pytest.raises(ValueError, match="samplers.sample"):
        sample_loop(oracle, x_T, s, 4, sampler="heun", prediction_type="sample")
