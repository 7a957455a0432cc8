"""Named training runs for `train_small.py`: the cascade's shape, its training budget and its sampling settings.

    ci       < 2 minutes on a 2-core CPU: a smoke test that every part of the pipeline runs (CI uses it)
    default  the out-of-the-box run: 3 stages on captioned shapes, about 20 minutes on a 2-core CPU
    scenes   2 stages (16 -> 64 px) on the shaded 3-D scenes, about 40 minutes on a 2-core CPU
    gpu      the paper's 64 -> 256 -> 1024 cascade shape, narrowed to fit one ~24 GB GPU

A preset names U-Net presets (`networks/configs.py`) plus overrides; `build_cascade_config` turns it into
the `CascadeConfig` that is saved with the checkpoint, so a trained cascade never depends on this file.

Contents: `RunPreset`, `RUN_PRESETS`, `build_cascade_config`, `prompt_sets`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..cascade import CascadeConfig, StageConfig
from ..networks.configs import unet_config
from ..text_encoder import DEFAULT_TEXT_ENCODER


@dataclass(frozen=True)
class RunPreset:
    sizes: tuple[int, ...]                 # image side of each stage, base first
    unets: tuple[tuple[str, dict], ...]    # (U-Net preset name, overrides) per stage
    steps: tuple[int, ...]                 # optimizer steps per stage
    batch_size: int                        # images per optimizer step (the global batch, over all processes)
    learning_rate: float = 1e-3            # AdamW peak LR (tiny U-Nets learn colour ~3x faster at 1e-3 than 2e-4)
    warmup_steps: int = 100                # linear LR warm-up
    ema_decay: float = 0.995               # short runs need a short EMA horizon (~200 steps)
    prediction_type: str = "v_prediction"  # v: clean backgrounds at few steps; "epsilon" is the paper's
    crop_size: int | None = None           # train the last stage on random crops of this side (paper: 1024 stage)
    train_noise_level_max: int = 500       # SR stages: augmentation levels drawn from [0, this) in training
    sample_noise_level: int = 100          # SR stages: augmentation level at sampling
    num_items: int = 8000                  # pre-rendered training items (captioned shapes)
    max_objects: int = 2                   # 1 = single-object scenes only
    text_encoder: str = DEFAULT_TEXT_ENCODER  # any name or directory text_encoder.load_text_encoder accepts
    max_length: int = 32                   # caption tokens kept (shape captions are < 20 tokens)
    num_inference_steps: tuple[int, ...] = (50, 25, 15)   # denoising steps per stage at sampling
    sampler: tuple[str, ...] = ("ddim", "ddim", "ddim")     # sampler per stage (diffusion.SAMPLERS)
    guidance_scale: tuple[float, ...] = (3.0, 1.0, 1.0)    # classifier-free guidance weight per stage
    # static clipping on the flat shapes (97.7 % of their values are exactly 0 or 1, so clipping is exactly right):
    # measured on the shipped cascade's base at guidance 3, 96 prompts x 2 seeds, all correct 1.00 / 0.99, FD 5.0 /
    # 165, background distance from white 0.022 / 0.147 for static / dynamic. The scenes preset (mid-tones) uses
    # dynamic thresholding on its guided base stage, where it keeps the best fidelity (results/effects.json).
    thresholding: tuple[str, ...] = ("static", "static", "static")
    grad_accum_steps: int = 1              # micro-batches per step on each process (fits a big batch in memory)
    checkpoint_every: int = 500            # optimizer steps between checkpoints (per stage)
    num_eval_prompts: int = 24             # prompts per evaluation set
    cond_drop_prob: float = 0.1            # caption dropout for classifier-free guidance (paper: 10 %)
    domain: str = "shapes"                 # built-in data when no --data folder: "shapes" or "scenes" (data/domains.py)
    eval_sets: tuple[tuple[str, str], ...] = (("single_heldout", "single_heldout"), ("single_train", "single"),
                                               ("two", "two"))  # (name, the domain's prompt kind) scored at the end
    min_snr_gamma: float | None = None     # min-SNR-gamma loss weighting (Hang et al. 2023); None = plain MSE
    notes: str = field(default="", compare=False)

    def sampling_kwargs(self, num_stages: int | None = None, start_stage: int = 0) -> dict:
        """The preset's per-stage sampling settings for stages [start_stage, num_stages)."""
        end = len(self.sizes) if num_stages is None else num_stages
        return {"num_inference_steps": list(self.num_inference_steps[start_stage:end]),
                "sampler": list(self.sampler[start_stage:end]),
                "guidance_scale": list(self.guidance_scale[start_stage:end]),
                "thresholding": list(self.thresholding[start_stage:end])}

    def with_overrides(self, stages: int | None = None, steps=None, batch_size: int | None = None,
                       text_encoder: str | None = None, max_length: int | None = None) -> "RunPreset":
        """The command-line overrides of train_small.py (None = keep the preset's), checked."""
        p = self
        if stages is not None:
            if not 1 <= stages <= len(p.sizes):
                raise ValueError(f"--stages must lie in [1, {len(p.sizes)}] for this preset, got {stages}")
            p = dataclasses.replace(p, sizes=p.sizes[:stages], unets=p.unets[:stages], steps=p.steps[:stages],
                                    crop_size=p.crop_size if stages == len(self.sizes) else None)
        if steps is not None:
            steps = tuple(steps) if len(steps) > 1 else tuple(steps) * len(p.sizes)
            if len(steps) != len(p.sizes) or min(steps) < 0:
                raise ValueError(f"--steps takes one value or {len(p.sizes)} values (one per stage), all >= 0; "
                                 f"got {list(steps)}")
            p = dataclasses.replace(p, steps=steps)
        if batch_size is not None:
            if batch_size < 1:
                raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
            p = dataclasses.replace(p, batch_size=batch_size)
        if text_encoder is not None:
            p = dataclasses.replace(p, text_encoder=text_encoder)
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"--max-length must be >= 2 (room for the special tokens), got {max_length}")
            p = dataclasses.replace(p, max_length=max_length)
        return p


# Attention placement is given by level (-1 = the lowest resolution) so a preset works at any stage size.
_BASE = ("base-tiny", {"base_channels": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 2,
                       "attn_levels": (-1,), "cross_attn_levels": (-2, -1), "num_heads": 2, "head_dim": 32,
                       "position_embedding": True})
_SR = ("sr-tiny", {"base_channels": 32, "channel_mults": (1, 2, 4), "num_res_blocks": (1, 2, 2),
                   "attn_levels": (), "cross_attn_levels": (-1,), "num_heads": 2, "head_dim": 32})

RUN_PRESETS: dict[str, RunPreset] = {
    "ci": RunPreset(sizes=(16, 32, 64), unets=(_BASE, _SR, _SR), steps=(60, 20, 20), batch_size=16,
                    num_items=400, num_inference_steps=(8, 4, 4), sampler=("dpmpp_2m",) * 3, num_eval_prompts=6,
                    checkpoint_every=0,
                    warmup_steps=10),
    # DPM-Solver++(2M) 10 / 5 / 10 steps (25 NFE): alignment equal to DDIM 50 / 20 / 10 (80 NFE), FD 69.8 vs 74.6,
    # 2.1x less CPU per prompt on the shipped cascade (results/sampler_tradeoff.json, README "Sampler trade-off")
    # base 2000 steps (was 1500): two-object all correct at 16 px 1.00 vs 0.78 (96 prompts x 2 seeds), +2.5 min
    "default": RunPreset(sizes=(16, 32, 128), unets=(_BASE, _SR, _SR), steps=(2000, 600, 500), batch_size=32,
                         crop_size=32, num_items=8000, num_inference_steps=(10, 5, 10), sampler=("dpmpp_2m",) * 3),
    # shaded 3-D scenes (data/scenes.py): mid-tones where thresholding, guidance and noise augmentation matter.
    # SR augmentation levels [0, 200), sampled at 50 (the shipped checkpoint has [0, 500) at 100): FD at 64 px
    # 171 vs 314, all correct 0.93 vs 0.68 on the same base samples (results/effects.json, notebook 06)
    "scenes": RunPreset(sizes=(16, 64), unets=(_BASE, _SR), steps=(1500, 2000), batch_size=32, crop_size=32,
                        train_noise_level_max=200, sample_noise_level=50,
                        num_items=8000, max_objects=2, domain="scenes", num_inference_steps=(50, 20),
                        guidance_scale=(3.0, 1.0), thresholding=("dynamic", "static"), num_eval_prompts=48,
                        eval_sets=(("single_heldout", "single_heldout"), ("single_train", "single"), ("two", "two"),
                                   ("paraphrase", "paraphrase"), ("misspelled", "misspelled"))),
    "gpu": RunPreset(
        sizes=(64, 256, 1024),
        unets=(("imagen-base-64", {"base_channels": 192, "text_embed_dim": 384}),
               ("imagen-sr-256", {"base_channels": 64, "text_embed_dim": 384}),
               ("imagen-sr-1024", {"base_channels": 32, "text_embed_dim": 384})),
        steps=(100_000, 50_000, 50_000), batch_size=64, grad_accum_steps=4, learning_rate=1e-4, warmup_steps=1000,
        ema_decay=0.9999, crop_size=256, num_items=10_000, max_length=64, checkpoint_every=2000),
}
# the noise-augmentation ablation (notebook 06, Imagen Fig. A.11): the scenes SR stage trained WITHOUT augmentation
# (every training level is 0); its base stage gets one step only: sample it with the scenes run's base stage
RUN_PRESETS["scenes_noaug"] = dataclasses.replace(RUN_PRESETS["scenes"], steps=(1, 2000), train_noise_level_max=1,
                                                  sample_noise_level=0, num_eval_prompts=4)


def build_cascade_config(preset: RunPreset, text_embed_dim: int) -> CascadeConfig:
    """The CascadeConfig (saved with every checkpoint) described by a run preset."""
    stages = []
    for i, (size, (name, overrides)) in enumerate(zip(preset.sizes, preset.unets)):
        trained = preset.crop_size if (i == len(preset.sizes) - 1 and i > 0 and preset.crop_size) else size
        unet = unet_config(name, **{**overrides, "image_size": trained, "text_embed_dim": text_embed_dim})
        stages.append(StageConfig(unet=unet, image_size=size, prediction_type=preset.prediction_type,
                                  cond_drop_prob=preset.cond_drop_prob,
                                  train_noise_level_max=preset.train_noise_level_max,
                                  sample_noise_level=preset.sample_noise_level,
                                  crop_size=trained if trained != size else None,
                                  min_snr_gamma=preset.min_snr_gamma))
    return CascadeConfig(stages=stages, text_encoder=preset.text_encoder, text_embed_dim=text_embed_dim,
                         max_length=preset.max_length)


def prompt_sets(preset: RunPreset) -> dict[str, list]:
    """Evaluation prompts of the preset's domain: {set name: [(caption, spec)]}; set i uses seed i."""
    from ..data.domains import load_domain
    domain = load_domain(preset.domain)
    return {name: domain.fixed_prompts(kind, n=preset.num_eval_prompts, seed=i)
            for i, (name, kind) in enumerate(preset.eval_sets) if kind == "single" or "two" not in kind
            or preset.max_objects >= 2}
