"""Tests for minimagen.diffusion: schedule values, conversions, posterior, thresholding, guidance, samplers.

Reference numbers come from the formulas (DDPM eq. 4/7, DDIM eq. 12/16, cosine schedule) evaluated by hand or
in float64 here, never from running the code under test.
"""
import math

import pytest
import torch

from minimagen.diffusion import (
    NoiseSchedule, apply_thresholding, as_timesteps, classifier_free_guidance, cosine_beta_schedule, ddim_step,
    ddpm_step, diffusion_loss, dynamic_threshold, min_snr_weight, eps_from_x0, extract, linear_beta_schedule, posterior_mean_variance, q_sample,
    sample_loop, static_threshold, training_target, v_from_x0_eps, x0_eps_from_model_output, x0_from_eps,
)

F64 = torch.float64
CHECK_T = [0, 249, 499, 749, 999]


def _data(seed=0, shape=(3, 2, 4, 4), dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1  # inside [-1, 1], so thresholding is a no-op
    eps = torch.randn(shape, generator=g, dtype=dtype)
    return x0, eps


# --------------------------------------------------------------------------------------------- schedules
def test_linear_schedule_alphas_cumprod_match_ddpm_values():
    abar = NoiseSchedule(1000, "linear").alphas_cumprod
    expected = [0.9999, 0.524085, 0.0785872, 0.00335055, 4.03583e-05]
    assert torch.allclose(abar[CHECK_T], torch.tensor(expected, dtype=F64), rtol=1e-5, atol=0)


def test_linear_schedule_posterior_variance_values():
    var = NoiseSchedule(1000, "linear").posterior_variance
    assert var[487].item() == pytest.approx(0.0097916, rel=1e-5)
    assert var[999].item() == pytest.approx(0.02, rel=1e-5)
    assert var[0].item() == 0.0  # alpha_bar_{-1} = 1: nothing left to be uncertain about


def test_cosine_schedule_alphas_cumprod_match_formula_values():
    abar = NoiseSchedule(1000, "cosine").alphas_cumprod
    expected = [0.999959, 0.847012, 0.493844, 0.144272, 2.42877e-09]
    assert torch.allclose(abar[CHECK_T], torch.tensor(expected, dtype=F64), rtol=1e-5, atol=0)


def test_cosine_first_beta_is_one_minus_ratio_of_cos_squared():
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cosine_beta_schedule(1000)[0].item() == pytest.approx(1 - f(1) / f(0), rel=1e-12)
    assert cosine_beta_schedule(1000)[-1].item() == 0.999  # f(T) = 0 would make it 1 without the cap


def test_linear_schedule_rescales_endpoints_by_1000_over_T():
    betas = linear_beta_schedule(500)
    assert betas[0].item() == pytest.approx(2e-4) and betas[-1].item() == pytest.approx(0.04)


def test_linear_schedule_caps_beta_below_one_at_T20():
    betas = linear_beta_schedule(20)  # uncapped end point: 0.02 * 1000 / 20 = 1.0
    assert betas[-1].item() == 0.999


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
@pytest.mark.parametrize("T", [2, 10, 20, 1000])
def test_schedules_are_finite_and_alphas_cumprod_strictly_decrease_in_open_unit_interval(T, beta_schedule):
    s = NoiseSchedule(T, beta_schedule)
    assert s.betas.dtype == F64 and s.betas.shape == (T,)
    for v in (s.betas, s.alphas, s.alphas_cumprod, s.alphas_cumprod_prev, s.posterior_variance):
        assert torch.isfinite(v).all()
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert ((s.alphas_cumprod > 0) & (s.alphas_cumprod < 1)).all()
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    assert torch.allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1]) and s.alphas_cumprod_prev[0] == 1


def test_inference_timesteps_are_trailing_and_evenly_spaced():
    s = NoiseSchedule(1000)
    assert s.inference_timesteps(4).tolist() == [999, 749, 499, 249]  # 999 - floor(i * 1000 / 4)
    assert s.inference_timesteps(1).tolist() == [999]
    assert s.inference_timesteps(1000).tolist() == list(range(999, -1, -1))
    assert s.inference_timesteps(4).dtype == torch.long


def test_inference_timesteps_strictly_decrease_from_T_minus_1_for_every_step_count():
    s = NoiseSchedule(20)
    for n in range(1, 21):
        ts = s.inference_timesteps(n)
        assert len(ts) == n and ts[0] == 19 and ts[-1] >= 0 and (ts[1:] < ts[:-1]).all()


# --------------------------------------------------------------------------- forward process, conversions
def test_extract_gives_per_sample_values_broadcastable_in_input_dtype():
    values = torch.arange(10, dtype=F64) / 10
    x = torch.zeros(3, 2, 5, 5, dtype=torch.float32)
    out = extract(values, torch.tensor([0, 4, 9]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([0.0, 0.4, 0.9])
    t = as_timesteps(7, batch_size=3)  # an int means every sample; checked once, at the entry point
    assert extract(values, t, x).flatten().tolist() == pytest.approx([0.7] * 3)


def test_diffusion_loss_is_algorithm_1_mse_against_the_prediction_types_target():
    abar = NoiseSchedule(10).alphas_cumprod
    x0, noise, t = torch.rand(3, 1, 2, 2, dtype=F64) * 2 - 1, torch.randn(3, 1, 2, 2, dtype=F64), torch.tensor([0, 4, 9])
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731 - predicts 0 whatever it is given
    # epsilon: || eps - 0 ||^2 averaged over every element; sample: || x0 ||^2
    assert float(diffusion_loss(zero, x0, abar, "epsilon", t=t, noise=noise)) == pytest.approx(float((noise ** 2).mean()))
    assert float(diffusion_loss(zero, x0, abar, "sample", t=t, noise=noise)) == pytest.approx(float((x0 ** 2).mean()))
    a = abar[t].sqrt().view(3, 1, 1, 1)
    b = (1 - abar[t]).sqrt().view(3, 1, 1, 1)
    v = a * noise - b * x0  # v = sqrt(abar) eps - sqrt(1 - abar) x0
    assert float(diffusion_loss(zero, x0, abar, "v_prediction", t=t, noise=noise)) == pytest.approx(float((v ** 2).mean()))
    # a model that undoes eq. 4 exactly has zero loss: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
    oracle = lambda x_t, tt: (x_t - abar[tt].sqrt().view(-1, 1, 1, 1) * x0) / (1 - abar[tt]).sqrt().view(-1, 1, 1, 1)  # noqa: E731
    assert float(diffusion_loss(oracle, x0, abar, "epsilon", t=t, noise=noise)) == pytest.approx(0.0, abs=1e-20)
    # t and eps drawn from the generator when not given: same seed, same loss
    one = diffusion_loss(zero, x0, abar, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, diffusion_loss(zero, x0, abar, generator=torch.Generator().manual_seed(3)))


def test_min_snr_weights_are_min_snr_gamma_in_each_prediction_space():
    abar = NoiseSchedule(10).alphas_cumprod
    t = torch.tensor([0, 5, 9])
    snr = abar[t] / (1 - abar[t])  # SNR_t
    for kind, expected in (("sample", snr.clamp(max=5)), ("epsilon", snr.clamp(max=5) / snr),
                           ("v_prediction", snr.clamp(max=5) / (snr + 1))):
        torch.testing.assert_close(min_snr_weight(t, abar, kind, 5.0), expected)
    assert float(snr[0]) > 5 and float(min_snr_weight(t, abar, "epsilon", 5.0)[0]) == pytest.approx(5 / float(snr[0]))
    x0, noise = torch.rand(3, 1, 2, 2, dtype=F64) * 2 - 1, torch.randn(3, 1, 2, 2, dtype=F64)
    zero = lambda x_t, tt: torch.zeros_like(x_t)  # noqa: E731
    weighted = diffusion_loss(zero, x0, abar, "epsilon", t=t, noise=noise, min_snr_gamma=5.0)
    by_hand = (min_snr_weight(t, abar, "epsilon", 5.0) * (noise ** 2).flatten(1).mean(1)).mean()
    assert float(weighted) == pytest.approx(float(by_hand), rel=1e-6)


def test_q_sample_matches_ddpm_eq4_by_hand():
    abar = NoiseSchedule(1000, "linear").alphas_cumprod
    x0, eps = torch.full((1, 1), 0.5, dtype=F64), torch.full((1, 1), -2.0, dtype=F64)
    expected = math.sqrt(0.524085) * 0.5 + math.sqrt(1 - 0.524085) * -2.0  # abar_249 from the test above
    assert q_sample(x0, 249, eps, abar).item() == pytest.approx(expected, rel=1e-5)


def test_x0_from_true_noise_recovers_x0():
    abar = NoiseSchedule(1000).alphas_cumprod
    x0, eps = _data()
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(x0_from_eps(q_sample(x0, t, eps, abar), t, eps, abar), x0, atol=1e-9)
    assert torch.allclose(eps_from_x0(q_sample(x0, t, eps, abar), t, x0, abar), eps, atol=1e-9)


def test_v_matches_its_definition_by_hand():
    abar = NoiseSchedule(1000, "linear").alphas_cumprod
    x0, eps = torch.full((1, 1), 0.5, dtype=F64), torch.full((1, 1), -2.0, dtype=F64)
    expected = math.sqrt(0.0785872) * -2.0 - math.sqrt(1 - 0.0785872) * 0.5  # abar_499
    assert v_from_x0_eps(x0, eps, 499, abar).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction", "eps", "x0", "v"])
def test_training_target_and_model_output_conversion_invert_each_other(prediction_type):
    abar = NoiseSchedule(1000).alphas_cumprod
    x0, eps = _data(1)
    t = torch.tensor([3, 400, 990])
    x_t = q_sample(x0, t, eps, abar)
    target = training_target(x0, eps, t, abar, prediction_type)
    x0_hat, eps_hat = x0_eps_from_model_output(target, x_t, t, abar, prediction_type)
    assert torch.allclose(x0_hat, x0, atol=1e-8) and torch.allclose(eps_hat, eps, atol=1e-8)


def test_prediction_type_aliases_give_the_same_targets():
    abar = NoiseSchedule(100).alphas_cumprod
    x0, eps = _data(2)
    for alias, name in [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")]:
        assert torch.equal(training_target(x0, eps, 50, abar, alias), training_target(x0, eps, 50, abar, name))


# ------------------------------------------------------------------------------------------- posterior
def test_posterior_for_consecutive_steps_equals_ddpm_eq7():
    s = NoiseSchedule(1000, "linear")
    x0, eps = _data(3)
    t = torch.tensor([1, 487, 999])
    x_t = q_sample(x0, t, eps, s.alphas_cumprod)
    mean, var = posterior_mean_variance(x0, x_t, t, t - 1, s.alphas_cumprod)
    b, a, ab, ab_prev = (v[t].reshape(-1, 1, 1, 1) for v in (s.betas, s.alphas, s.alphas_cumprod,
                                                              s.alphas_cumprod_prev))
    expected_mean = ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * x_t  # eq. 7
    assert torch.allclose(mean, expected_mean, atol=1e-12)
    assert torch.allclose(var.flatten(), s.posterior_variance[t], rtol=1e-12)


def test_posterior_at_t_prev_minus_one_is_x0_with_zero_variance():
    abar = NoiseSchedule(1000).alphas_cumprod
    x0, eps = _data(4)
    x_t = q_sample(x0, 0, eps, abar)
    mean, var = posterior_mean_variance(x0, x_t, 0, -1, abar)
    assert torch.allclose(mean, x0, atol=1e-12) and (var == 0).all()


def test_ddim_with_eta_one_equals_ddpm_posterior_over_skipped_steps():
    # DDIM eq. 16 with eta = 1 is the variance of q(x_t' | x_t, x_0), and its mean is the posterior mean.
    abar = NoiseSchedule(1000).alphas_cumprod
    x0, eps = _data(5)
    x_t = q_sample(x0, 900, eps, abar)
    ddpm = ddpm_step(x0, x_t, 900, 500, abar, generator=torch.Generator().manual_seed(7))
    ddim = ddim_step(x0, eps, x_t, 900, 500, abar, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(ddpm, ddim, atol=1e-10)


def test_ddpm_step_adds_no_noise_when_landing_on_x0():
    abar = NoiseSchedule(1000).alphas_cumprod
    x0, eps = _data(6)
    x_t = q_sample(x0, 5, eps, abar)
    assert torch.allclose(ddpm_step(x0, x_t, 5, -1, abar, generator=torch.Generator().manual_seed(0)), x0)


def test_ddpm_step_is_reproducible_with_a_generator():
    abar = NoiseSchedule(100).alphas_cumprod
    x0, eps = _data(7)
    x_t = q_sample(x0, 50, eps, abar)
    a = ddpm_step(x0, x_t, 50, 40, abar, generator=torch.Generator().manual_seed(1))
    b = ddpm_step(x0, x_t, 50, 40, abar, generator=torch.Generator().manual_seed(1))
    c = ddpm_step(x0, x_t, 50, 40, abar, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------- thresholding, guidance
X = torch.tensor([[-2, -1.5, -0.5, 0, 0.25, 0.5, 1, 3]], dtype=F64)  # sorted |x|: 0 .25 .5 .5 1 1.5 2 3


def test_dynamic_threshold_p090_scales_by_interpolated_quantile_2_3():
    # linear interpolation: position 0.9 * 7 = 6.3 -> 2 + 0.3 * (3 - 2) = 2.3; 3 is clipped to 2.3 first
    out = dynamic_threshold(X, 0.9)
    expected = torch.tensor([[-0.8696, -0.6522, -0.2174, 0, 0.1087, 0.2174, 0.4348, 1]], dtype=F64)
    assert torch.allclose(out, expected, atol=5e-5)
    assert torch.allclose(out, X.clamp(-2.3, 2.3) / 2.3, atol=1e-12)


def test_dynamic_threshold_cap_limits_s_to_sample_max_value():
    # position 0.95 * 7 = 6.65 -> s = 2.65, capped at 1.5
    assert torch.allclose(dynamic_threshold(X, 0.95, sample_max_value=1.5), X.clamp(-1.5, 1.5) / 1.5)


def test_dynamic_threshold_is_identity_when_values_within_one():
    x0, _ = _data(8)
    assert torch.equal(dynamic_threshold(x0, 0.9), x0)
    assert torch.equal(dynamic_threshold(x0, 1.0, sample_max_value=4.0), x0)


def test_dynamic_threshold_picks_s_per_sample():
    batch = torch.cat([X, 3 * X])  # (2, 8): s = 2.3 and s = 6.9
    out = dynamic_threshold(batch, 0.9)
    assert torch.allclose(out[0], X[0].clamp(-2.3, 2.3) / 2.3)
    assert torch.allclose(out[1], (3 * X[0]).clamp(-6.9, 6.9) / 6.9)


def test_static_threshold_is_clipping_and_apply_thresholding_dispatches():
    assert torch.equal(static_threshold(X), X.clamp(-1, 1))
    assert torch.equal(apply_thresholding(X, "static"), X.clamp(-1, 1))
    assert torch.equal(apply_thresholding(X, "none"), X)
    assert torch.equal(apply_thresholding(X, "dynamic", 0.9), dynamic_threshold(X, 0.9))


def test_classifier_free_guidance_weights():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    # w = 3: 0.5 + 3 (2 - 0.5) = 5;  1 + 3 (-1 - 1) = -5
    assert torch.allclose(classifier_free_guidance(cond, uncond, 3.0), torch.tensor([5.0, -5.0]))


# ------------------------------------------------------------------------------------------ sample loop
@pytest.mark.parametrize("num_inference_steps", [1, 7, 50, 1000])
def test_ddim_eta0_with_oracle_noise_predictor_returns_x0(num_inference_steps):
    s = NoiseSchedule(1000)
    x0, x_T = _data(9)
    oracle = lambda x_t, t: eps_from_x0(x_t, t, x0, s.alphas_cumprod)  # noqa: E731
    out = sample_loop(oracle, x_T, s, num_inference_steps, sampler="ddim", eta=0.0)
    assert torch.allclose(out, x0, atol=1e-8)


def test_full_ddpm_loop_with_oracle_x0_predictor_ends_at_x0():
    s = NoiseSchedule(100, "linear")
    x0, x_T = _data(10)
    out = sample_loop(lambda x_t, t: x0, x_T, s, 100, sampler="ddpm", prediction_type="sample",
                      generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
@pytest.mark.parametrize("T", [2, 10, 20])
def test_sample_loop_output_is_finite_for_short_schedules(T, beta_schedule, sampler):
    # regression: a linear schedule rescaled by 1000/T hits beta = 1 at T = 20 -> alpha_bar = 0 -> NaN
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 3, 4, 4, generator=g)  # float32, like real images
    dummy = lambda x_t, t: torch.randn(x_t.shape, generator=g)  # noqa: E731
    out = sample_loop(dummy, x_T, NoiseSchedule(T, beta_schedule), T, sampler=sampler, eta=0.5, generator=g)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_ddim_loop_recomputes_eps_from_the_thresholded_x0():
    # eps = 3 at x_T = 0 implies x_0 << -1; static clipping gives x_0 = -1, and the DDIM step must use the eps
    # consistent with (x_t, clipped x_0): eps' = (x_t - sqrt(abar_9) x_0) / sqrt(1 - abar_9)
    s = NoiseSchedule(10)
    seen = []
    sample_loop(lambda x, t: torch.full_like(x, 3.0), torch.zeros(1, 1, dtype=F64), s, 2,
                thresholding="static", callback=lambda i, t, x_t, x0: seen.append((t, x_t.item(), x0.item())))
    (t0, _, x0_first), (t1, x_4, _) = seen
    a9, a4 = s.alphas_cumprod[9].item(), s.alphas_cumprod[4].item()
    eps = (0 - math.sqrt(a9) * -1) / math.sqrt(1 - a9)
    assert (t0, t1, x0_first) == (9, 4, -1.0)
    assert x_4 == pytest.approx(math.sqrt(a4) * -1 + math.sqrt(1 - a4) * eps, rel=1e-12)


def test_sample_loop_calls_callback_once_per_step_with_decreasing_t():
    seen = []
    x_T = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    sample_loop(lambda x, t: torch.zeros_like(x), x_T, NoiseSchedule(1000), 4,
                callback=lambda i, t, x_t, x0: seen.append((i, t, x0.shape)))
    assert seen == [(0, 999, x_T.shape), (1, 749, x_T.shape), (2, 499, x_T.shape), (3, 249, x_T.shape)]


def test_sample_loop_passes_a_long_timestep_per_sample_to_the_model():
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    sample_loop(model, torch.zeros(3, 1, 2, 2), NoiseSchedule(10), 2)
    assert [t.tolist() for t in seen] == [[9, 9, 9], [4, 4, 4]] and seen[0].dtype == torch.long


# ------------------------------------------------------------------------------------------- bad input
def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_bad_schedule_arguments_raise_value_errors_naming_them():
    _raises("num_train_timesteps", linear_beta_schedule, 1)
    _raises("num_train_timesteps", cosine_beta_schedule, 0)
    _raises("num_train_timesteps", NoiseSchedule, 1)
    _raises("beta_schedule", NoiseSchedule, 10, "quadratic")
    _raises("max_beta", cosine_beta_schedule, 10, max_beta=1.0)
    _raises("num_inference_steps", NoiseSchedule(10).inference_timesteps, 0)
    _raises("num_inference_steps", NoiseSchedule(10).inference_timesteps, 11)


def test_bad_timesteps_raise_value_errors_naming_them():
    abar = NoiseSchedule(10).alphas_cumprod
    x = torch.zeros(2, 1)
    _raises("^t must", q_sample, x, 10, x, abar)
    _raises("^t must", q_sample, x, -1, x, abar)
    _raises("^t must", q_sample, x, torch.tensor([0.5, 1.0]), x, abar)
    _raises("^t must", as_timesteps, torch.tensor([0.5, 1.0]), 2)
    _raises("^t must hold one timestep per sample", as_timesteps, torch.tensor([1, 2, 3]), 2)
    _raises("^t_prev must be < t", posterior_mean_variance, x, x, 5, 5, abar)
    _raises("^t_prev must be < t", ddim_step, x, x, x, torch.tensor([5, 5]), torch.tensor([4, 6]), abar)
    _raises("^t_prev must", ddpm_step, x, x, 5, -2, abar)


def test_bad_modes_and_weights_raise_value_errors_naming_them():
    abar = NoiseSchedule(10).alphas_cumprod
    x = torch.zeros(2, 1)
    _raises("prediction_type", training_target, x, x, 3, abar, "noise")
    _raises("prediction_type", x0_eps_from_model_output, x, x, 3, abar, "score")
    _raises("thresholding", apply_thresholding, x, "soft")
    _raises("dynamic_thresholding_ratio", dynamic_threshold, x, 0.0)
    _raises("dynamic_thresholding_ratio", dynamic_threshold, x, 1.5)
    _raises("sample_max_value", dynamic_threshold, x, 0.9, 0.5)
    _raises("eta", ddim_step, x, x, x, 5, 4, abar, eta=1.5)
    _raises("eta", ddim_step, x, x, x, 5, 4, abar, eta=-0.1)
    _raises("guidance_scale", classifier_free_guidance, x, x, -1.0)
    s, model = NoiseSchedule(10), (lambda x_t, t: x_t)
    _raises("sampler", sample_loop, model, x, s, 2, sampler="plms")
    _raises("eta", sample_loop, model, x, s, 2, eta=2.0)
    _raises("prediction_type", sample_loop, model, x, s, 2, prediction_type="score")
    _raises("thresholding", sample_loop, model, x, s, 2, thresholding="soft")
    _raises("num_inference_steps", sample_loop, model, x, s, 11)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sample_loop_on_cuda_with_a_cpu_generator_matches_cpu():
    s = NoiseSchedule(50)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731

    def run(device):
        return sample_loop(model, x_T.to(device), s, 10, sampler="ddpm", generator=torch.Generator().manual_seed(1))

    assert torch.allclose(run("cuda").cpu(), run("cpu"), atol=1e-4)
