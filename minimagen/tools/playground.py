"""The playground: one prompt and a handful of sampling settings in, every stage's image out.

The non-interactive core of notebooks/11_playground.ipynb, whose widgets only collect the arguments:

    images = generate(cascade, "a red circle on the left", guidance_scale=5.0, seed=0)   # base image first
    fig = make_figure(images, "a red circle on the left", settings={"guidance_scale": 5.0, "seed": 0})

Each setting is a knob the paper turns: `guidance_scale` (classifier-free guidance, Imagen §2.2),
`thresholding` and `dynamic_thresholding_ratio` (§2.3), `noise_level` of the super-resolution stages (noise
conditioning augmentation, §2.4), plus the `sampler`, `num_inference_steps` and `seed`. `generate` is
`cascade(...)` with a seeded generator and every stage's images returned, so the same settings always give the
same pictures. guidance_scale, thresholding, dynamic_thresholding_ratio, sampler and num_inference_steps take one
value for every stage or a list with one per stage of the cascade, also when num_stages stops early (where
`Cascade.__call__` wants one per stage it runs), so one settings dict serves every call.

Contents: `available_samplers`, `generate`, `describe_settings`, `make_figure`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import diffusion


def available_samplers() -> tuple[str, ...]:
    """The samplers minimagen offers (minimagen.diffusion.SAMPLERS, read at call time)."""
    return tuple(diffusion.SAMPLERS)


def _check_choice(name: str, value, choices: Sequence[str]) -> None:
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v not in choices:
            raise ValueError(f"{name} must be one of {tuple(choices)} (or a list with one per stage), got {v!r}")


@torch.no_grad()
def generate(cascade, prompt: str, *, guidance_scale: float | Sequence[float] = 5.0,
             thresholding: str | Sequence[str] = "dynamic",
             dynamic_thresholding_ratio: float | Sequence[float] = 0.95, noise_level: int | None = None,
             sampler: str | Sequence[str] = "ddim", num_inference_steps: int | Sequence[int] = 25, seed: int = 0,
             num_stages: int | None = None) -> list[torch.Tensor]:
    """Sample `prompt` through the cascade; returns one (3, s, s) image in [0, 1] per stage, base first.

    noise_level: the augmentation level n in [0, 1000) of every super-resolution stage (None: each stage's
    sample_noise_level). num_stages: stop after this many stages (None: all); a per-stage list still has one value
    per stage of the cascade, and the first num_stages are used. Same arguments, same images.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty caption, e.g. 'a red circle on the left', got {prompt!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int (the same seed gives the same images), got {seed!r}")
    _check_choice("sampler", sampler, available_samplers())
    _check_choice("thresholding", thresholding, diffusion.THRESHOLDING_MODES)
    run = cascade.num_stages if num_stages is None else num_stages
    per_stage = {}
    for name, value in (("guidance_scale", guidance_scale), ("thresholding", thresholding),
                        ("dynamic_thresholding_ratio", dynamic_thresholding_ratio), ("sampler", sampler),
                        ("num_inference_steps", num_inference_steps)):
        if isinstance(value, (list, tuple)):
            if len(value) != cascade.num_stages:
                raise ValueError(f"{name} has {len(value)} values but the cascade has {cascade.num_stages} stages; "
                                 f"pass one value, or a list with one per stage")
            value = list(value)[:run]  # the stages that run (num_stages may stop early)
        per_stage[name] = value
    output = cascade([prompt], noise_level=noise_level, num_stages=num_stages, output_type="pt",
                     generator=torch.Generator().manual_seed(seed), return_all_stages=True, progress=False,
                     **per_stage)
    return [images[0] for images in output.all_stages]  # [B = 1, 3, s, s] per stage -> (3, s, s)


def _per_stage_text(value, fmt: str = "{}") -> str:
    if isinstance(value, (list, tuple)):
        return "/".join(fmt.format(v) for v in value)
    return fmt.format(value)


def describe_settings(settings: dict) -> str:
    """One line naming the settings, e.g. 'w 5, dynamic p 0.95, ddim 25 steps, noise level 100, seed 0'."""
    parts = []
    if "guidance_scale" in settings:
        parts.append(f"w {_per_stage_text(settings['guidance_scale'], '{:g}')}")
    if "thresholding" in settings:
        text = _per_stage_text(settings["thresholding"])
        if "dynamic" in text and "dynamic_thresholding_ratio" in settings:
            text += f" p {_per_stage_text(settings['dynamic_thresholding_ratio'], '{:g}')}"
        parts.append(text)
    if "sampler" in settings or "num_inference_steps" in settings:
        parts.append(f"{_per_stage_text(settings.get('sampler', 'ddim'))} "
                     f"{_per_stage_text(settings.get('num_inference_steps', 25))} steps")
    if settings.get("noise_level") is not None:
        parts.append(f"noise level {settings['noise_level']}")
    if "seed" in settings:
        parts.append(f"seed {settings['seed']}")
    return ", ".join(parts)


def make_figure(images: Sequence[torch.Tensor], prompt: str = "", settings: dict | None = None,
                panel_inches: float = 2.0, dpi: int = 72):
    """A matplotlib Figure with one panel per stage (base first), every panel the same size on screen so that
    the stages compare pixel for pixel (nearest-neighbour zoom). The caller shows or saves it."""
    import matplotlib.pyplot as plt

    if not images:
        raise ValueError("images is empty: pass the list generate(...) returns (one (3, s, s) image per stage)")
    fig, axes = plt.subplots(1, len(images), figsize=(panel_inches * len(images), panel_inches + 0.7), dpi=dpi,
                             squeeze=False)
    for k, (ax, image) in enumerate(zip(axes[0], images)):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"images[{k}] must be one (3, s, s) image in [0, 1], got shape {tuple(image.shape)}")
        pixels = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()  # (3, s, s) -> (s, s, 3)
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(f"stage {k}: {image.shape[-1]}x{image.shape[-1]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    title = "\n".join(line for line in (repr(prompt) if prompt else "", describe_settings(settings or {})) if line)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig
