"""Fidelity and diversity at classroom scale: a Frechet distance on the features of a small domain network.

The Imagen paper measures fidelity with FID (Heusel et al. 2017): fit a Gaussian to Inception-v3 features
of real images and one to features of samples, and report the Frechet (2-Wasserstein) distance between them,
    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).
Inception weights cannot be downloaded here and would judge 32-px shapes badly anyway, so we do what
classroom FIDs do (e.g. fast.ai's course): train a small CNN on the domain itself, with a supervised
objective that makes its features care about what the captions talk about -- the colour, shape, size and
place of every object -- and compute the same distance on its features.

The features (minimagen/data/feature_net.py): images are resized to 32 x 32 by one rule for training and
evaluation alike; the 256 features are low-level statistics of the first conv layer (per channel, mean and
std over positions: colour, contrast, edge and texture energy -- what noise, blur, tints and saturation
change) and a 128-d semantic layer the attribute heads read (what objects are where). Every feature is
divided by its std on real renders, so FD is in units of "one feature's variance".

Using it: compare two sets AT THE SAME RESOLUTION AND THE SAME n, e.g.
    ex = FeatureExtractor.from_pretrained("shapes")
    fd = ex.fidelity(reference_images("shapes", 500, 32, seed=0), samples)   # samples [500, 3, 32, 32]
FD estimated from n images is biased upward by about c / n (two real sets of 500 score ~7, of 2000 ~1.6),
so quote the real-vs-real value at the same n beside every number. Numbers are comparable only for the
same feature net; they are NOT Inception FIDs. Detail finer than a 32-px image shows (e.g. the texture of
a 128-px SR output) is averaged away before the net sees it.

Diversity: `diversity(images_per_prompt)` = mean over prompts of the mean pairwise feature distance among
samples of the same prompt (different seeds), divided by the same mean distance between real renders of
random, different scenes (`reference_spread`, stored with the net). 0: every seed gives the same picture
(up to what the net sees); 1: samples of one prompt differ as much as random scenes of the domain do.
Note a shapes caption fixes its picture completely, so real shapes images of one prompt have diversity 0.
`pixel_std` is the feature-free alternative: mean over pixels of the std across seeds.

Measured with the shipped nets (`python -m minimagen.tools.train_feature_net --measure-only --domain D`):
FD(real set, real or corrupted set of another seed), 32-px renders, mean +- std over 5 seeds.
  real vs real   n = 100        250          500          1000         2000
  shapes             34.1+-3.3  14.5+-0.7    6.8+-0.4     3.3+-0.3     1.6+-0.1
  scenes             27.6+-2.9  10.0+-0.8    5.1+-0.6     2.5+-0.2     1.3+-0.1
Two real sets are the same distribution, so this is pure estimator bias: it falls like 1/n (n * FD ~ 3400
for shapes, ~2600 for scenes) while a corruption adds a roughly n-independent amount on top (shapes: noise
0.1 adds ~10 at n = 300 and at n = 500). The seed-to-seed std is the resolution: use n >= 500 (std 0.4 -
0.6) and the same n for every set compared; n = 2000 brings the std to 0.1.
  corruption of the second set, n = 500              shapes                       scenes
  none (real vs real)                                6.8                          5.1
  noise sigma 0.02 / 0.05 / 0.1 / 0.2                7.1 / 8.8 / 16.7 / 71.3      7.8 / 84 / 664 / 3724
  Gaussian blur sigma 0.5 / 1 / 2 px                 9.7 / 25.2 / 61.8            13.8 / 77 / 290
  colour shift (+d, 0, -d), d = 0.05 / 0.1 / 0.2     12.7 / 33.9 / 131            571 / 2086 / 6926
  saturate gain 1.25 / 1.5 / 2                       6.9 / 7.2 / 8.1              393 / 1315 / 3578
  blank grey / uniform noise                         3610 / 2062                  12824 / 9476
FD rose strictly from real through every level of every corruption in 5 of 5 seeds, both domains.
Shapes are flat pure hues on white (97.7 % of values at 0 or 1): saturation changes only anti-aliased
edges and a tint leaves pure colours alone, so those effects are small there. Scenes renders share one
floor, wall and lighting, so any global tint or contrast change moves every image off the real statistics.
Units differ per domain (each is "one feature's variance on real renders"): compare within a domain.

Map: frechet_distance_from_stats / feature_stats / frechet_distance -> FeatureExtractor (from_pretrained,
features, fidelity, diversity), mean_pairwise_distance, pixel_std, fidelity() -> corruptions that
validate the metric (add_noise, gaussian_blur, color_shift, saturate).
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minimagen.data.feature_net import (FeatureNet, FeatureNetConfig, reference_images,  # noqa: F401
                                        weights_path)  # reference_images: the real set to compare against


# ---------------------------------------------------------------------------------------------------
# The Frechet distance between two Gaussians (pure float64 numpy)
# ---------------------------------------------------------------------------------------------------
def _sqrt_psd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues clipped at 0, symmetric square root) of a symmetric positive semi-definite matrix."""
    sym = (matrix + matrix.T) / 2.0                                  # remove round-off asymmetry
    lam, u = np.linalg.eigh(sym)                                     # sym = U diag(lam) U^T
    lam = np.clip(lam, 0.0, None)                                    # tiny negative round-off -> 0
    return lam, (u * np.sqrt(lam)) @ u.T                             # sym^{1/2} = U diag(sqrt lam) U^T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    Tr (S1 S2)^{1/2} via a symmetric form: S1 S2 = S1^{1/2} (S1^{1/2} S2 S1^{1/2}) S1^{-1/2} is similar to
    M = S1^{1/2} S2 S1^{1/2} (and AB, BA share eigenvalues even when S1 is singular), M is symmetric PSD,
    so Tr (S1 S2)^{1/2} = sum_i sqrt(eig_i(M)): two eigh calls, no complex numbers, no scipy."""
    mu1, mu2 = np.asarray(mu1, np.float64).reshape(-1), np.asarray(mu2, np.float64).reshape(-1)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes disagree: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {s2.shape}; use means of length d and d x d covariances")
    _, sqrt_s1 = _sqrt_psd(s1)                                       # S1^{1/2}
    lam_m, _ = _sqrt_psd(sqrt_s1 @ s2 @ sqrt_s1)                     # eig(S1^{1/2} S2 S1^{1/2})
    tr_covmean = np.sqrt(lam_m).sum()                                # Tr (S1 S2)^{1/2}
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean  # ||mu1-mu2||^2 + Tr(S1+S2-2(S1S2)^1/2)
    return float(max(fd, 0.0))                                       # >= 0 in exact arithmetic


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], covariance [d, d] with the unbiased 1/(N-1)) of features [N, d], float64."""
    x = np.asarray(feats.detach().cpu() if isinstance(feats, torch.Tensor) else feats, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features have shape {x.shape}; pass [N, d] with N >= 2 (FD needs a covariance)")
    mu = x.mean(axis=0)                                              # mu = (1/N) sum_i f_i
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)                         # S = (1/(N-1)) sum_i (f_i-mu)(f_i-mu)^T


def frechet_distance(feats_a, feats_b) -> float:
    """FD between Gaussians fitted to two feature sets [N_a, d] and [N_b, d] (tensors or arrays)."""
    return frechet_distance_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


# ---------------------------------------------------------------------------------------------------
# Loading a trained net and using it
# ---------------------------------------------------------------------------------------------------
class FeatureExtractor:
    """A trained FeatureNet in eval mode, plus the metric's verbs: features, fidelity, diversity."""

    def __init__(self, net: FeatureNet, domain: str, batch_size: int = 250):
        self.net, self.domain, self.batch_size = net.eval(), domain, batch_size

    @classmethod
    def from_pretrained(cls, domain: str = "shapes", path=None) -> "FeatureExtractor":
        """Load minimagen/assets/feature_net_{domain}.safetensors (or `path`), offline."""
        from safetensors import safe_open
        from safetensors.torch import load_file
        path = Path(path) if path is not None else weights_path(domain)
        if not path.exists():
            raise FileNotFoundError(f"no feature net for domain {domain!r} at {path}; train one with "
                                    f"python -m minimagen.tools.train_feature_net --domain {domain} --out {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("domain") != domain:
            raise ValueError(f"{path} holds a feature net for domain {meta.get('domain')!r}, not {domain!r}; "
                             f"pass domain={meta.get('domain')!r} or the right path")
        net = FeatureNet(FeatureNetConfig(**json.loads(meta["config"])))
        net.load_state_dict(load_file(str(path)))
        return cls(net, domain)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled features [N, feature_dim] of images [N, 3, H, H] in [0, 1] (any H; see resize_for_features)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images have shape {tuple(images.shape)}; pass a batch [N, 3, H, W]")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"image values span [{lo:.3f}, {hi:.3f}]; pass images in [0, 1] (output_type='pt'):"
                             " map [-1, 1] with (x + 1) / 2, or clamp(0, 1) samples that overshoot")
        images = images.to(self.net.feature_std.device, torch.float32)  # the net's device (CPU unless moved)
        return torch.cat([self.net.features(images[i:i + self.batch_size])
                          for i in range(0, images.shape[0], self.batch_size)])

    def fidelity(self, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
        """FD between the feature Gaussians of two image sets (e.g. real renders vs samples)."""
        return frechet_distance(self.features(images_a), self.features(images_b))

    def diversity(self, images_per_prompt) -> float:
        """Mean over prompts of the mean pairwise feature distance among one prompt's samples, divided by
        reference_spread (the same mean for random real renders). images_per_prompt: [P, K, 3, H, W] or a
        list of [K, 3, H, W] (K >= 2 seeds per prompt)."""
        spreads = [mean_pairwise_distance(self.features(group)) for group in images_per_prompt]
        return float(np.mean(spreads)) / float(self.net.reference_spread)


def mean_pairwise_distance(feats) -> float:
    """(2 / (K (K-1))) sum_{i<j} ||f_i - f_j||_2 over the K rows of feats [K, d]."""
    x = torch.as_tensor(feats, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features have shape {tuple(x.shape)}; pass [K, d] with K >= 2 samples")
    k = x.shape[0]
    return float(torch.pdist(x).sum() * 2.0 / (k * (k - 1)))       # pdist: the K(K-1)/2 distances i < j


def pixel_std(images_per_prompt) -> float:
    """Feature-free diversity: mean over prompts, channels and pixels of the std across seeds (unbiased)
    of [P, K, 3, H, W] (or a list of [K, 3, H, W]); 0 when every seed gives the same picture."""
    return float(np.mean([torch.as_tensor(g, dtype=torch.float64).std(dim=0).mean() for g in images_per_prompt]))


@functools.lru_cache(maxsize=None)
def shipped_extractor(domain: str) -> FeatureExtractor:
    """The FeatureExtractor of minimagen/assets/feature_net_{domain}.safetensors, loaded once per process."""
    return FeatureExtractor.from_pretrained(domain)


def fidelity(images_a: torch.Tensor, images_b: torch.Tensor, domain: str = "shapes") -> float:
    """FD between two image sets [N, 3, H, H] in [0, 1] on the shipped feature net of `domain`."""
    return shipped_extractor(domain).fidelity(images_a, images_b)


# ---------------------------------------------------------------------------------------------------
# Corruptions used to validate the metric (images [N, 3, H, W] in [0, 1] -> same)
# ---------------------------------------------------------------------------------------------------
def add_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    eps = torch.randn(images.shape, generator=generator)
    return (images + sigma * eps).clamp(0.0, 1.0)                 # clip(x + sigma * eps, 0, 1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, std `sigma` pixels, kernel radius ceil(3 sigma), edges reflected."""
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=images.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()                                                 # [2r + 1] taps summing to 1
    x = F.pad(images, (r, r, r, r), mode="reflect")                 # [N, 3, H + 2r, W + 2r]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)  # rows:    [N, 3, H + 2r, W]
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)  # columns: [N, 3, H, W]


def color_shift(images: torch.Tensor, delta: float) -> torch.Tensor:
    """A warm tint: red + delta, blue - delta, clipped to [0, 1]."""
    shift = torch.tensor([delta, 0.0, -delta], dtype=images.dtype).view(1, 3, 1, 1)
    return (images + shift).clamp(0.0, 1.0)


def saturate(images: torch.Tensor, gain: float = 1.5) -> torch.Tensor:
    """Contrast stretch about mid-grey that saturates at 0 and 1 (what static clipping does to over-guided
    samples): x -> clip(gain (x - 0.5) + 0.5, 0, 1)."""
    return (gain * (images - 0.5) + 0.5).clamp(0.0, 1.0)
