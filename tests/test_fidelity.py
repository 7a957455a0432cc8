"""The fidelity metric: the Frechet distance matches closed forms, and on the shipped feature nets (shapes,
scenes) it is small between two real sets and rises step by step with noise, blur, colour shift and saturation."""
import math

import numpy as np
import pytest
import torch

from minimagen.data.feature_net import get_feature_domain, reference_images, weights_path
from minimagen.data.fidelity import (FeatureExtractor, add_noise, color_shift, fidelity, frechet_distance,
                                     frechet_distance_from_stats, gaussian_blur, mean_pairwise_distance,
                                     pixel_std, saturate)
from minimagen.tools import train_feature_net

N_IMAGES = 200  # per set: every ordering below held in 10 of 10 seeds at n = 200 (saturate 1.25, not tested: 8)
N_FAR = 50     # blank and noise images are far at any n


# --------------------------------------------------------------------------------------------------
# The distance itself, against hand computation
# --------------------------------------------------------------------------------------------------
def test_frechet_distance_of_1d_gaussians_is_mean_gap_squared_plus_std_gap_squared():
    # N(1, 2^2) vs N(3, 3^2): (1 - 3)^2 + (2 - 3)^2 = 5
    assert frechet_distance_from_stats([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0, abs=1e-12)


def test_frechet_distance_of_diagonal_2d_gaussians_sums_over_axes():
    # axis 1: (0 - 1)^2 + (1 - 3)^2 = 5; axis 2: (0 - 2)^2 + (2 - 4)^2 = 8
    fd = frechet_distance_from_stats([0.0, 0.0], np.diag([1.0, 4.0]), [1.0, 2.0], np.diag([9.0, 16.0]))
    assert fd == pytest.approx(13.0, abs=1e-12)


def test_frechet_distance_with_non_commuting_2x2_covariances_matches_closed_form():
    # For 2x2 PSD matrices Tr (S1 S2)^{1/2} = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) (sum of the square roots
    # of two eigenvalues): tr(S1 S2) = 2 + 8 = 10, det S1 det S2 = 3 * 4 -> FD = 4 + 5 - 2 sqrt(10 + 2 sqrt 12)
    s1, s2 = np.array([[2.0, 1.0], [1.0, 2.0]]), np.diag([1.0, 4.0])
    expected = 9.0 - 2.0 * math.sqrt(10.0 + 2.0 * math.sqrt(12.0))
    assert frechet_distance_from_stats([0, 0], s1, [0, 0], s2) == pytest.approx(expected, abs=1e-12)
    assert frechet_distance_from_stats([0, 0], s2, [0, 0], s1) == pytest.approx(expected, abs=1e-12)


def test_frechet_distance_from_samples_uses_the_unbiased_covariance():
    # a = {0, 2}: mean 1, variance (1 + 1) / (2 - 1) = 2; b = {0, 4}: mean 2, variance 8
    # FD = (1 - 2)^2 + (sqrt 2 - sqrt 8)^2 = 1 + 2 = 3
    assert frechet_distance([[0.0], [2.0]], [[0.0], [4.0]]) == pytest.approx(3.0, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(30, 12)) @ rng.normal(size=(12, 12))
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_is_zero_on_identical_sets_and_finite_with_singular_covariances():
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))  # 5 samples in 16-d: rank 4
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < frechet_distance(x, x + 1.0) == pytest.approx(16.0, rel=1e-6)  # ||(1, ..., 1)||^2


def test_frechet_distance_rejects_mismatched_or_too_few_features():
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


# --------------------------------------------------------------------------------------------------
# Diversity and the corruptions, by hand
# --------------------------------------------------------------------------------------------------
def test_mean_pairwise_distance_of_a_3_4_5_triangle_is_4():
    assert mean_pairwise_distance([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]]) == pytest.approx(4.0)  # (5 + 3 + 4) / 3


def test_pixel_std_is_zero_for_repeated_images_and_sqrt_half_for_black_and_white():
    same = torch.rand(3, 8, 8).expand(2, 4, 3, 8, 8)                   # 2 prompts x 4 identical seeds
    assert pixel_std(same) == 0.0
    assert pixel_std(torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])[None]) == pytest.approx(0.5**0.5)


def test_saturate_is_the_clipped_contrast_stretch():
    x = torch.tensor([0.1, 0.7, 0.9]).view(1, 3, 1, 1)                 # 1.5 (x - 0.5) + 0.5 = -0.1, 0.8, 1.1
    assert saturate(x, 1.5).flatten().tolist() == pytest.approx([0.0, 0.8, 1.0])


def test_blur_keeps_constant_images_and_color_shift_is_clipped():
    grey = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(grey, 1.5), grey, atol=1e-6)
    shifted = color_shift(torch.ones(1, 3, 2, 2), 0.1)
    assert shifted[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 0.9])


# --------------------------------------------------------------------------------------------------
# The shipped feature nets, one per domain
# --------------------------------------------------------------------------------------------------
DOMAINS = ("shapes", "scenes")


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor.from_pretrained("shapes")


@pytest.fixture(scope="module", params=DOMAINS)
def domain_fd(request):
    """(domain, {X: FD(real set A, X)}) for X = another real set B and corrupted copies of B, 32 px."""
    domain, extractor = request.param, FeatureExtractor.from_pretrained(request.param)
    a, b = (reference_images(domain, N_IMAGES, 32, seed) for seed in (1, 2))
    fa = extractor.features(a)
    sets = {"real": b, "blank": torch.full_like(b[:N_FAR], 0.5),
            "uniform": torch.rand(b[:N_FAR].shape, generator=torch.Generator().manual_seed(3))}
    for sigma in (0.02, 0.05, 0.1, 0.2):
        sets[f"noise {sigma}"] = add_noise(b, sigma, torch.Generator().manual_seed(4))
    for sigma in (0.5, 1.0, 2.0):
        sets[f"blur {sigma}"] = gaussian_blur(b, sigma)
    for delta in (0.05, 0.1, 0.2):
        sets[f"color {delta}"] = color_shift(b, delta)
    for gain in (1.5, 2.0):
        sets[f"saturate {gain}"] = saturate(b, gain)
    return domain, {name: frechet_distance(fa, extractor.features(x)) for name, x in sets.items()}


@pytest.mark.parametrize("family, levels", [
    ("noise", (0.02, 0.05, 0.1, 0.2)), ("blur", (0.5, 1.0, 2.0)), ("color", (0.05, 0.1, 0.2)),
    ("saturate", (1.5, 2.0))])
def test_fd_rises_monotonically_with_each_corruption(domain_fd, family, levels):
    domain, fd = domain_fd
    values = [fd["real"]] + [fd[f"{family} {level}"] for level in levels]
    assert all(lo < hi for lo, hi in zip(values, values[1:])), (domain, dict(zip(("real",) + levels, values)))


def test_fd_real_vs_real_is_small_and_blank_or_noise_images_are_far(domain_fd):
    domain, fd = domain_fd
    corrupted = [v for k, v in fd.items() if k not in ("real", "blank", "uniform")]
    assert fd["real"] < min(corrupted), domain
    assert min(fd["blank"], fd["uniform"]) > max(corrupted), (domain, fd)      # farther than any corruption
    assert min(fd["blank"], fd["uniform"]) > 100 * fd["real"], (domain, fd)


@pytest.mark.parametrize("domain", DOMAINS)
def test_feature_net_reads_every_attribute_of_new_renders(domain):
    net = FeatureExtractor.from_pretrained(domain).net
    images, labels = get_feature_domain(domain).render_batch(100, 32, np.random.default_rng(5))
    with torch.no_grad():
        logits = net(images)
    accuracy = torch.stack([(lg.argmax(1) == labels[:, k]).float().mean() for k, lg in enumerate(logits)])
    assert accuracy.min() >= 0.97, accuracy


def test_features_accept_any_square_resolution_and_reject_values_outside_0_1(extractor):
    for size in (16, 64, 128):
        images, _ = get_feature_domain("shapes").render_batch(2, size, np.random.default_rng(size))
        assert extractor.features(images).shape == (2, extractor.net.config.feature_dim)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        extractor.features(torch.full((2, 3, 32, 32), -1.0))


def test_fidelity_function_uses_the_shipped_net(extractor):
    a, b = (reference_images("shapes", 20, 32, seed) for seed in (7, 8))
    assert fidelity(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fidelity(a, b, domain="shapes") == pytest.approx(extractor.fidelity(a, b), rel=1e-9)


def test_diversity_is_0_for_one_picture_per_prompt_and_about_1_for_random_scenes(extractor):
    images, _ = get_feature_domain("shapes").render_batch(64, 32, np.random.default_rng(6))
    assert extractor.diversity(images[:4, None].expand(4, 8, 3, 32, 32)) == pytest.approx(0.0, abs=1e-6)
    assert 0.8 < extractor.diversity(images.view(4, 16, 3, 32, 32)) < 1.2  # unit: random real renders


def test_missing_weights_name_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m minimagen.tools.train_feature_net --domain shapes"):
        FeatureExtractor.from_pretrained("shapes", path=tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="not one of"):
        get_feature_domain("photos")


def test_training_is_deterministic_and_saves_loadable_weights(tmp_path):
    args = ["--steps", "2", "--batch-size", "2", "--calibration-images", "4", "--no-measure"]
    for name in ("a", "b"):
        train_feature_net.main(args + ["--out", str(tmp_path / f"{name}.safetensors")])
    a, b = (FeatureExtractor.from_pretrained("shapes", tmp_path / f"{n}.safetensors") for n in "ab")
    for key, value in a.net.state_dict().items():
        assert torch.equal(value, b.net.state_dict()[key]), key
    with pytest.raises(ValueError, match="for domain 'shapes', not 'scenes'"):
        FeatureExtractor.from_pretrained("scenes", tmp_path / "a.safetensors")


@pytest.mark.parametrize("domain", DOMAINS)
def test_shipped_weights_are_small(domain):
    assert weights_path(domain).stat().st_size <= 5 * 2**20
