"""Sampling the cascade: text -> base image -> super-resolution -> ... (Imagen §2, Fig. A.4).

`sample_cascade(cascade, prompts, ...)` is what `cascade(prompts, ...)` calls. It speaks diffusers'
vocabulary: `guidance_scale`, `num_inference_steps`, `generator`, `output_type`, `noise_level`, plus
`sampler` ("ddpm" / "ddim"), `thresholding` ("none" / "static" / "dynamic") and
`dynamic_thresholding_ratio`. Each of those may be one value for every stage or a list with one value per
stage (`noise_level`: one per super-resolution stage).

Per stage:
  1. x_T ~ N(0, I) at the stage's size;
  2. for each of `num_inference_steps` timesteps, one batched U-Net call on [x_t, x_t] with the caption
     and with the null caption, combined by classifier-free guidance (Ho & Salimans 2022):
         pred = pred_uncond + w * (pred_cond - pred_uncond)
     then x0 is thresholded (Imagen §2.3) and a step of the chosen sampler is taken (`samplers.sample`:
     DDPM / DDIM in `diffusion.sample_loop`, DPM-Solver++ / Euler / Heun in `samplers.py`);
  3. the result becomes the next stage's low-res condition through the SAME
     `conditioning.prepare_lowres_condition` used in training (noise conditioning augmentation).

Contents: `CascadeOutput`, `StageSettings` + `stage_settings` (per-stage options, validated once),
`sample_cascade`, `sweep_noise_levels`, `to_output_type`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .conditioning import NUM_NOISE_LEVELS, check_text, prepare_lowres_condition
from .diffusion import check_number, check_sampling_options, classifier_free_guidance
from .samplers import sample

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class CascadeOutput:
    images: Any                      # the last stage's images in `output_type`
    all_stages: list | None = None   # with return_all_stages=True: every stage's images, base first


@dataclass
class StageSettings:
    """How one stage is sampled; validated on construction (the one place sample_cascade's options are checked)."""

    stage: int                                # index in the cascade (0 = base)
    image_size: int                           # side of the stage's images
    num_train_timesteps: int                  # T of the stage's schedule (bounds num_inference_steps)
    guidance_scale: float = 5.0               # classifier-free guidance weight w (1 = plain conditional model)
    num_inference_steps: int = 50             # denoising steps
    sampler: str = "ddim"                     # see diffusion.SAMPLERS
    eta: float = 0.0                          # DDIM noise (0 = deterministic)
    thresholding: str = "dynamic"             # "none" / "static" / "dynamic" (Imagen §2.3)
    dynamic_thresholding_ratio: float = 0.95  # percentile p of |x0| for dynamic thresholding
    sample_max_value: float | None = None     # cap on the dynamic threshold s (None = the paper's: no cap)
    noise_level: int | None = None            # SR stages: augmentation level in [0, 1000) (Imagen §2.4)

    def __post_init__(self) -> None:
        check_number("guidance_scale", self.guidance_scale)
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {self.guidance_scale}")
        steps, T = self.num_inference_steps, self.num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ValueError(f"num_inference_steps must be an int in [1, {T}] (the stage's num_train_timesteps), "
                             f"got {steps!r}")
        check_sampling_options(self.sampler, self.eta, self.thresholding, self.dynamic_thresholding_ratio,
                               self.sample_max_value)
        lv = self.noise_level
        if self.stage > 0 and (isinstance(lv, bool) or not isinstance(lv, int) or not 0 <= lv < NUM_NOISE_LEVELS):
            raise ValueError(f"noise_level must be an int in [0, {NUM_NOISE_LEVELS - 1}] (one, or a list with one "
                             f"per super-resolution stage), got {lv!r}")


def _per_stage(value, count: int, name: str, what: str = "stage") -> list:
    """One value for all stages, or a list/tuple with exactly one per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} values but there are {count} {what}s to run; "
                             f"pass one value, or a list of {count}")
        return list(value)
    return [value] * count


def stage_settings(cascade, stages: list[int], noise_level=None, **options) -> list[StageSettings]:
    """Expand sample_cascade's options (one value, or one per stage; noise_level one per SR stage) per stage."""
    per_stage = {name: _per_stage(value, len(stages), name) for name, value in options.items()}
    sr_stages = [s for s in stages if s > 0]
    if noise_level is None:
        levels = [cascade.config.stages[s].sample_noise_level for s in sr_stages]
    else:
        levels = _per_stage(noise_level, len(sr_stages), "noise_level", what="super-resolution stage")
    out = []
    for i, s in enumerate(stages):
        cfg = cascade.config.stages[s]
        out.append(StageSettings(stage=s, image_size=cfg.image_size, num_train_timesteps=cfg.num_train_timesteps,
                                 noise_level=levels[sr_stages.index(s)] if s > 0 else None,
                                 **{name: values[i] for name, values in per_stage.items()}))
    return out


def _check_prompts(prompts) -> list[str]:
    if prompts is None:
        raise ValueError("prompts is None: pass a caption or a list of captions, or text_embeds and text_mask")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings, e.g. ['a red circle']")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__} ({p!r}); pass text, e.g. "
                            f"[str(x) for x in prompts]")
    return list(prompts)


def _text_condition(cascade, prompts, text_embeds, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(text_embeds [B, L, D], text_mask [B, L]) from prompts (encoded once, shared by every stage) or as given."""
    if text_embeds is None:
        return cascade.encode_text(_check_prompts(prompts))
    if text_mask is None:
        raise ValueError("text_mask is required with text_embeds ([B, L] bool, True = real token)")
    d = cascade.config.text_embed_dim
    if text_embeds.ndim != 3 or text_embeds.shape[-1] != d or tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
        raise ValueError(f"text_embeds must be [B, L, {d}] and text_mask [B, L] (this cascade's text encoder "
                         f"{cascade.config.text_encoder!r} gives {d}-d tokens), got {tuple(text_embeds.shape)} and "
                         f"{tuple(text_mask.shape)}; make them with cascade.encode_text(prompts)")
    check_text(text_embeds, text_mask, text_embeds.shape[0], d)  # e.g. an all-False mask row
    return text_embeds, text_mask


def _check_stage_range(cascade, start_stage: int, num_stages: int | None, lowres_images, batch: int) -> list[int]:
    """The stages to run, [start_stage, num_stages), checked together with the low-res images they may need."""
    n_total = cascade.num_stages
    end = n_total if num_stages is None else num_stages
    if not 0 <= start_stage < end <= n_total:
        raise ValueError(f"need 0 <= start_stage ({start_stage}) < num_stages ({end}) <= {n_total} stages")
    if lowres_images is not None and start_stage == 0:  # would be silently ignored: the base stage starts from noise
        raise ValueError("lowres_images is only used together with start_stage >= 1 (the first stage to run must be "
                         "a super-resolution stage); pass start_stage=1 to upsample them")
    if start_stage > 0:
        if lowres_images is None:
            raise ValueError(f"start_stage={start_stage} needs lowres_images [B, 3, h, w] in [0, 1] from stage "
                             f"{start_stage - 1}")
        prev = cascade.config.stages[start_stage - 1].image_size
        cascade._check_images(lowres_images, prev, "lowres_images")  # shape, dtype and [0, 1] range
        if lowres_images.shape[0] != batch:
            raise ValueError(f"lowres_images has {lowres_images.shape[0]} images but there are {batch} prompts")
    return list(range(start_stage, end))


@torch.no_grad()
def sample_cascade(
    cascade,
    prompts: str | Sequence[str] | None = None,
    *,
    text_embeds: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    guidance_scale: float | Sequence[float] = 5.0,
    num_inference_steps: int | Sequence[int] = 50,
    sampler: str | Sequence[str] = "ddim",
    eta: float | Sequence[float] = 0.0,
    thresholding: str | Sequence[str] = "dynamic",
    dynamic_thresholding_ratio: float | Sequence[float] = 0.95,
    sample_max_value: float | None | Sequence[float | None] = None,
    noise_level: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    output_type: str = "pil",
    return_all_stages: bool = False,
    num_stages: int | None = None,
    start_stage: int = 0,
    lowres_images: torch.Tensor | None = None,
    use_ema: bool = True,
    offload: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    callback=None,
) -> CascadeOutput:
    """Generate images for `prompts`; returns `CascadeOutput(images, all_stages)`.

    guidance_scale: w >= 0 (1 = no guidance, the plain conditional model). num_inference_steps: 1..T.
    noise_level: augmentation level in [0, 1000) per SR stage (default: each stage's sample_noise_level).
    The per-stage options (guidance_scale ... sample_max_value) take one value or a list with one per stage.
    num_stages: stop after this many stages (e.g. 1 = base only). start_stage + lowres_images: run only the
    SR stages on given low-res images [B, 3, h, w] in [0, 1] (e.g. to sweep noise levels).
    offload: keep only the running U-Net on `device` (the others, and the text encoder, stay on the CPU), so
    a cascade bigger than the GPU's memory samples on it; each U-Net goes back to the CPU after its stage.
    device: where to sample (default: where the cascade's U-Nets are).
    callback(stage, step_index, t, x_t, x0_pred): called at every denoising step (for teaching plots).
    """
    text_embeds, text_mask = _text_condition(cascade, prompts, text_embeds, text_mask)
    batch = text_embeds.shape[0]
    stages = _check_stage_range(cascade, start_stage, num_stages, lowres_images, batch)
    settings = stage_settings(cascade, stages, noise_level, guidance_scale=guidance_scale,
                              num_inference_steps=num_inference_steps, sampler=sampler, eta=eta,
                              thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
                              sample_max_value=sample_max_value)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    device = torch.device(device) if device is not None else cascade.device
    gdev = generator.device if generator is not None else device
    text_embeds, text_mask = text_embeds.to(device), text_mask.to(device)

    images, all_stages = lowres_images, []
    for st in settings:
        unet = cascade.sampling_unet(st.stage, use_ema)
        if offload or next(unet.parameters()).device != device:
            unet.to(device)
        lowres_cond = level = None
        if st.stage > 0:  # the previous stage's images through the SAME function as in training (Imagen §2.4)
            level = torch.full((batch,), st.noise_level, dtype=torch.long, device=device)
            lowres_cond = prepare_lowres_condition(images.to(device), st.image_size, level, generator=generator)
        model_fn = _guided_model(unet, text_embeds, text_mask, lowres_cond, level, st.guidance_scale)
        x_T = torch.randn((batch, 3, st.image_size, st.image_size), generator=generator, device=gdev).to(device)
        step_cb = None if callback is None else (lambda k, t, x, x0, _s=st.stage: callback(_s, k, t, x, x0))
        x0 = sample(
            model_fn, x_T, cascade.schedules[st.stage], st.num_inference_steps, sampler=st.sampler, eta=st.eta,
            prediction_type=cascade.config.stages[st.stage].prediction_type, thresholding=st.thresholding,
            dynamic_thresholding_ratio=st.dynamic_thresholding_ratio, sample_max_value=st.sample_max_value,
            generator=generator, callback=step_cb,
            progress=f"stage {st.stage} ({st.image_size}px, {st.sampler})" if progress else False)
        images = ((x0.clamp(-1, 1) + 1) / 2).float()  # [-1, 1] -> [0, 1]
        if offload:
            unet.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()  # give the freed blocks back before the next, larger stage
        if return_all_stages:
            all_stages.append(to_output_type(images, output_type))
    return CascadeOutput(to_output_type(images, output_type), all_stages if return_all_stages else None)


def _guided_model(unet, text_embeds, text_mask, lowres_cond, noise_level, guidance_scale: float):
    """model_fn(x_t, t) for the sampler: one batched forward for the (cond, uncond) pair when w != 1."""
    if guidance_scale == 1.0:  # w = 1: the conditional prediction alone; skip the unconditional pass
        return lambda x_t, t: unet(x_t, t, text_embeds, text_mask, lowres_image=lowres_cond, noise_level=noise_level)

    batch = text_embeds.shape[0]
    drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(text_embeds.device)
    embeds2, mask2 = torch.cat([text_embeds, text_embeds]), torch.cat([text_mask, text_mask])  # [2B, L, D], [2B, L]
    cond2 = None if lowres_cond is None else torch.cat([lowres_cond, lowres_cond])            # [2B, 3, H, W]
    level2 = None if noise_level is None else torch.cat([noise_level, noise_level])           # [2B]

    def model_fn(x_t, t):
        out = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), embeds2, mask2,  # [2B, 3, H, W]
                   lowres_image=cond2, noise_level=level2, drop_text=drop)
        pred_cond, pred_uncond = out.chunk(2)                                 # 2 x [B, 3, H, W]
        return classifier_free_guidance(pred_cond, pred_uncond, guidance_scale)
    return model_fn


def to_output_type(images: torch.Tensor, output_type: str):
    """[B, 3, H, W] in [0, 1] -> "pt" (same, on CPU), "np" ([B, H, W, 3] float32), "pil" (list of PIL images)."""
    images = images.detach().float().cpu()
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy()  # [B, H, W, 3]
    if output_type == "np":
        return array
    from PIL import Image
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in array]


def sweep_noise_levels(cascade, prompt: str, noise_levels: Sequence[int], stage: int = 1, seed: int = 0,
                       **kwargs) -> dict[int, torch.Tensor]:
    """Same prompt and seed, one image per augmentation level at `stage` (the paper picks the level by sweeping).

    Runs the stages before `stage` once, then `stage` once per level from the same seed.
    Returns {level: [3, H, W] in [0, 1]}.
    """
    if stage < 1:
        raise ValueError("stage must be a super-resolution stage (>= 1) to sweep its noise_level")
    kwargs = {**kwargs, "progress": kwargs.get("progress", False)}
    base = sample_cascade(cascade, [prompt], num_stages=stage, output_type="pt",
                          generator=torch.Generator().manual_seed(seed), **kwargs).images
    out = {}
    for level in noise_levels:
        img = sample_cascade(cascade, [prompt], start_stage=stage, num_stages=stage + 1, lowres_images=base,
                             noise_level=level, output_type="pt", generator=torch.Generator().manual_seed(seed + 1),
                             **kwargs).images
        out[level] = img[0]
    return out
