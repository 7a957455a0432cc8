"""Noise conditioning augmentation: the low-resolution input of a super-resolution stage (Imagen §2.4).

A super-resolution (SR) U-Net sees two images: the noisy high-resolution x_t it denoises, and the
low-resolution image it must upsample, given as extra input channels. At *training* time the low-res image
is made from the clean training image; at *sampling* time it is the previous stage's output, which has
the previous stage's artefacts. Imagen closes that gap by corrupting the low-res condition with Gaussian
noise of a random "augmentation level" during training and telling the U-Net the level, then choosing a
(small, fixed) level at sampling time:

    c        = upsample(lowres) * 2 - 1                                  (to the SR size, then to [-1, 1])
    c_aug    = sqrt(alpha_bar[n]) * c + sqrt(1 - alpha_bar[n]) * eps     (q_sample with noise_level n)

`noise_level` n is an integer in [0, 1000): the step index of a fixed 1000-step cosine schedule, as in
DeepFloyd IF's stage II (whose default is 250) and diffusers' `noise_level`. For orientation
(sqrt(alpha_bar), sqrt(1 - alpha_bar)): n=20 -> (0.999, 0.043), 100 -> (0.986, 0.169),
250 -> (0.920, 0.393), 500 -> (0.702, 0.713).

ONE function, `prepare_lowres_condition`, builds the condition for training *and* sampling. One public
Imagen port normalised after noising at sampling but before it at training, so its SR stage saw a
different input distribution at test time; here the order (resize -> normalise -> noise) cannot differ.

Contents: `NUM_NOISE_LEVELS`, `augmentation_schedule`, `downsample`, `upsample`, `check_images` and
`check_text` (the stage inputs, checked once with errors that say the fix),
`prepare_lowres_condition`.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .diffusion import NoiseSchedule, q_sample

NUM_NOISE_LEVELS = 1000  # noise_level is an index into a 1000-step cosine schedule


@functools.lru_cache(maxsize=1)
def augmentation_schedule() -> NoiseSchedule:
    """The fixed schedule behind `noise_level` (independent of each stage's own diffusion schedule)."""
    return NoiseSchedule(num_train_timesteps=NUM_NOISE_LEVELS, beta_schedule="cosine")


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average down to `size` x `size` (what a camera at the lower resolution would see)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="area")


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear up to `size` x `size`; bilinear is affine-equivariant, so upsample(2x-1) = 2 upsample(x) - 1."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def check_images(lowres: torch.Tensor, name: str) -> None:
    """Raise an error naming `name` unless `lowres` is a float [B, 3, h, w] tensor with values in [0, 1]."""
    if not isinstance(lowres, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, 3, h, w] with values in [0, 1], "
                        f"got {type(lowres).__name__}")
    if lowres.ndim != 4 or lowres.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B, 3, h, w] (RGB, channels first), got {tuple(lowres.shape)}")
    if not lowres.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got dtype {lowres.dtype}; "
                         "for uint8 images divide by 255")
    if lowres.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(lowres.shape)}); pass at least one image")
    if not torch.isfinite(lowres).all():
        bad = int((~torch.isfinite(lowres)).sum())
        raise ValueError(f"{name} holds {bad} NaN or infinite values: the images were corrupted before they got "
                         "here (a failed decode or a division by zero?); check the data pipeline")
    lo, hi = float(lowres.min()), float(lowres.max())
    if not (lo >= -1e-3 and hi <= 1 + 1e-3):
        raise ValueError(f"{name} values must lie in [0, 1] (got min {lo:.3f}, max {hi:.3f}); "
                         "if your images are in [-1, 1], pass (images + 1) / 2")


def check_text(text_embeds: torch.Tensor, text_mask: torch.Tensor, batch: int, embed_dim: int) -> None:
    """text_embeds [B, L, D] and text_mask [B, L] bool for a batch of B images, every caption with a real token.

    An all-False mask row would silently train or sample that item unconditionally: unconditional is what
    caption dropout (drop_text) is for, so it must be asked for, not fall out of a broken mask.
    """
    if not isinstance(text_embeds, torch.Tensor) or text_embeds.ndim != 3 or text_embeds.shape[-1] != embed_dim:
        shape = tuple(text_embeds.shape) if isinstance(text_embeds, torch.Tensor) else type(text_embeds).__name__
        raise ValueError(f"text_embeds must be [B, L, {embed_dim}] (the cascade's text encoder width), got {shape}; "
                         "make them with cascade.encode_text(captions)")
    if not isinstance(text_mask, torch.Tensor) or tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
        shape = tuple(text_mask.shape) if isinstance(text_mask, torch.Tensor) else type(text_mask).__name__
        raise ValueError(f"text_mask must be [B, L] = {tuple(text_embeds.shape[:2])} like text_embeds, got {shape}")
    if text_embeds.shape[0] != batch:
        raise ValueError(f"text_embeds holds {text_embeds.shape[0]} captions but there are {batch} images; pass one "
                         "caption per image (same batch order)")
    empty = (~text_mask.bool()).all(dim=1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"text_mask rows {empty[:5]} have no True token, which would silently mean 'no caption'; "
                         "for unconditional training use cond_drop_prob (drop_text), for unconditional sampling "
                         "guidance_scale=0")


def prepare_lowres_condition(
    lowres: torch.Tensor,
    target_size: int,
    noise_level: torch.Tensor | int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The SR stage's low-res input, identical at training and sampling time.

    lowres: [B, 3, h, w] in [0, 1] (the downsampled training image, or the previous stage's output).
    target_size: side of this stage's images. noise_level: int or [B] long in [0, 1000).
    Returns [B, 3, target_size, target_size], normalised to [-1, 1] and then noised at `noise_level`.
    """
    check_images(lowres, "lowres")
    batch = lowres.shape[0]
    if not isinstance(noise_level, torch.Tensor):
        noise_level = torch.full((batch,), int(noise_level), dtype=torch.long)
    noise_level = noise_level.to(device=lowres.device, dtype=torch.long)
    if noise_level.shape != (batch,):
        raise ValueError(f"noise_level must be an int or a tensor of shape [{batch}], got {tuple(noise_level.shape)}")
    if int(noise_level.min()) < 0 or int(noise_level.max()) >= NUM_NOISE_LEVELS:
        raise ValueError(f"noise_level must lie in [0, {NUM_NOISE_LEVELS - 1}] (an index into the 1000-step "
                         f"augmentation schedule), got {noise_level.tolist()}")
    cond = upsample(lowres, target_size) * 2 - 1  # [B, 3, H, W] in [-1, 1]: resize, then normalise
    if noise is None:
        noise = torch.randn(cond.shape, generator=generator, device=generator.device if generator else cond.device,
                            dtype=cond.dtype).to(cond.device)
    schedule = augmentation_schedule()
    return q_sample(cond, noise_level, noise, schedule.alphas_cumprod)  # then noise (DDPM eq. 4)
