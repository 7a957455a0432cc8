"""The Imagen cascade: a frozen text encoder and N diffusion U-Nets, base stage first (Imagen §2, Fig. A.4).

    caption --T5/BERT--> text tokens --base U-Net--> 64x64 --SR U-Net--> 256x256 --SR U-Net--> 1024x1024

Every stage is an independent diffusion model over images of its own size, conditioned on the same
frozen text embeddings. Super-resolution (SR) stages are also conditioned on the previous stage's image,
prepared by `conditioning.prepare_lowres_condition` (noise conditioning augmentation). Stages are trained
separately — `Cascade.training_loss(stage, ...)` — and sampled in a chain by `Cascade.__call__`
(see `sampling.py`). Sizes are free: 16 -> 32 -> 64 on a laptop CPU, 64 -> 256 -> 1024 as in the paper.

Contents: `StageConfig`, `CascadeConfig` (typed, validated, JSON round trip), `tiny_cascade_config` (the tiny
preset the tests use), `Cascade` (the U-Nets, their noise schedules, the training loss, text encoding,
save/load), `TrainingDraws` (every random draw of one training batch).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint
from .conditioning import NUM_NOISE_LEVELS, check_images, check_text, downsample, prepare_lowres_condition
from .diffusion import BETA_SCHEDULES, PREDICTION_TYPES, NoiseSchedule, diffusion_loss
from .networks.configs import unet_config
from .networks.unet import UNetConfig, build_unet
from .text_encoder import DEFAULT_TEXT_ENCODER, load_text_encoder
from .text_encoder import text_embed_dim as text_embed_dim_of


@dataclass
class StageConfig:
    """One diffusion stage of the cascade (its network and its diffusion process)."""

    unet: UNetConfig                    # the stage's U-Net (its text_embed_dim must match the text encoder)
    image_size: int = 0                 # side of the images this stage outputs; 0 = unet.image_size
    num_train_timesteps: int = 1000     # T of the training noise schedule (DDPM/Imagen: 1000)
    beta_schedule: str = "cosine"       # "cosine" (Nichol & Dhariwal) or "linear" (DDPM)
    prediction_type: str = "epsilon"    # what the U-Net predicts: "epsilon" (Imagen), "v_prediction", "sample"
    cond_drop_prob: float = 0.1         # captions replaced by the null embedding during training (paper: 10 %)
    train_noise_level_max: int = 500    # SR only: augmentation levels drawn uniformly from [0, this) in training
    sample_noise_level: int = 100       # SR only: default augmentation level at sampling (swept in the paper)
    crop_size: int | None = None        # SR only: train on random crops of this side (paper: 1024 stage on 256 crops)
    min_snr_gamma: float | None = None  # loss weighting min(SNR, gamma) (Hang et al. 2023, gamma=5); None = plain MSE

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        if not isinstance(self.unet, UNetConfig):
            raise TypeError(f"unet must be a UNetConfig (e.g. unet_config('base-tiny', text_embed_dim=384)) or its "
                            f"dict, got {type(self.unet).__name__}")
        for name in ("image_size", "num_train_timesteps", "train_noise_level_max", "sample_noise_level", "crop_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) and not (name == "crop_size" and value is None):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.image_size == 0:
            self.image_size = self.unet.image_size
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {self.image_size}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.min_snr_gamma is not None and (isinstance(self.min_snr_gamma, bool) or
                                               not isinstance(self.min_snr_gamma, (int, float)) or
                                               not self.min_snr_gamma > 0):
            raise ValueError(f"min_snr_gamma must be a number > 0 (Hang et al. use 5) or None, got {self.min_snr_gamma!r}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1), got {self.cond_drop_prob}")
        if not 1 <= self.train_noise_level_max <= NUM_NOISE_LEVELS:
            raise ValueError(f"train_noise_level_max must lie in [1, {NUM_NOISE_LEVELS}], got "
                             f"{self.train_noise_level_max}")
        if not 0 <= self.sample_noise_level < NUM_NOISE_LEVELS:
            raise ValueError(f"sample_noise_level must lie in [0, {NUM_NOISE_LEVELS - 1}], got "
                             f"{self.sample_noise_level}")
        trained_size = self.crop_size or self.image_size
        if self.crop_size is not None:
            if not self.unet.lowres_cond:
                raise ValueError("crop_size is only for super-resolution stages (the base stage sees whole images); "
                                 "set crop_size=None")
            if not 0 < self.crop_size <= self.image_size:
                raise ValueError(f"crop_size must lie in (0, image_size={self.image_size}], got {self.crop_size}")
        if self.unet.image_size != trained_size:
            raise ValueError(f"unet.image_size ({self.unet.image_size}) must equal the size this stage is trained "
                             f"at ({'crop_size' if self.crop_size else 'image_size'} = {trained_size}); build the "
                             f"U-Net with image_size={trained_size}")

    @property
    def is_super_resolution(self) -> bool:
        return self.unet.lowres_cond


@dataclass
class CascadeConfig:
    """Everything needed to rebuild a cascade (saved as config.json beside the weights)."""

    stages: list[StageConfig]                      # base stage first, then SR stages of increasing size
    text_encoder: str = DEFAULT_TEXT_ENCODER       # name or local directory (see text_encoder.py)
    text_embed_dim: int = 0                        # width of the encoder's tokens; 0 = look it up offline
    max_length: int = 64                           # captions are truncated to this many tokens
    extra: dict = field(default_factory=dict)      # free-form notes (e.g. how it was trained); not used by code

    def __post_init__(self) -> None:
        if not isinstance(self.stages, (list, tuple)):
            raise TypeError(f"stages must be a list of StageConfig (base stage first), got {type(self.stages).__name__}"
                            "; wrap a single stage in a list: stages=[stage]")
        self.stages = [StageConfig(**s) if isinstance(s, dict) else s for s in self.stages]
        if not self.stages:
            raise ValueError("stages must hold at least one StageConfig (the base stage)")
        if self.text_embed_dim == 0:
            self.text_embed_dim = text_embed_dim_of(self.text_encoder)
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for the text encoder's special tokens), got "
                             f"{self.max_length!r}; captions are usually < 32 tokens")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageConfig):
                raise TypeError(f"stages[{i}] must be a StageConfig, got {type(stage).__name__}; wrap a U-Net config "
                                "as StageConfig(unet=...)")
            if stage.unet.text_embed_dim != self.text_embed_dim:
                raise ValueError(f"stages[{i}].unet.text_embed_dim is {stage.unet.text_embed_dim} but the text encoder "
                                 f"{self.text_encoder!r} gives {self.text_embed_dim}-d tokens; set "
                                 f"text_embed_dim={self.text_embed_dim} in that stage's UNetConfig")
            if stage.is_super_resolution != (i > 0):
                what = "must not be" if i == 0 else "must be"
                raise ValueError(f"stages[{i}] {what} a super-resolution stage (unet.lowres_cond={i > 0}): "
                                 "the first stage is the base model, every later stage upsamples its predecessor")
            if i > 0 and stage.image_size <= self.stages[i - 1].image_size:
                raise ValueError(f"stages[{i}].image_size ({stage.image_size}) must be larger than the previous "
                                 f"stage's ({self.stages[i - 1].image_size})")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = [{**dataclasses.asdict(s), "unet": s.unet.to_dict()} for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CascadeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CascadeConfig fields {sorted(unknown)}: this config was written by a "
                             "different program or a newer minimagen")
        return cls(**d)


def tiny_cascade_config(sizes: tuple[int, ...] = (8, 16), text_encoder: str = "tiny-t5", text_embed_dim: int = 0,
                        **stage_kwargs) -> CascadeConfig:
    """The "tiny" preset: ~50 k-parameter U-Nets at `sizes` (base first), for tests and quick experiments.

    The default text encoder "tiny-t5" is random and offline (64-d tokens); stage_kwargs go to every StageConfig.
    """
    d = text_embed_dim or text_embed_dim_of(text_encoder)
    small = dict(base_channels=16, num_heads=2, head_dim=8, text_embed_dim=d)
    stages = [StageConfig(unet_config("base-tiny", image_size=sizes[0], channel_mults=(1, 2), num_res_blocks=1,
                                      attn_resolutions=(sizes[0] // 2,), cross_attn_resolutions=(sizes[0] // 2,),
                                      **small), **stage_kwargs)]
    for s in sizes[1:]:
        stages.append(StageConfig(unet_config("sr-tiny", image_size=s, channel_mults=(1, 2), num_res_blocks=(1, 1),
                                              attn_resolutions=(), cross_attn_resolutions=(s // 4,), **small),
                                  **stage_kwargs))
    return CascadeConfig(stages=stages, text_encoder=text_encoder, text_embed_dim=d)


class Cascade(nn.Module):
    """Text encoder + N U-Nets. Train a stage with `training_loss`, sample with `cascade(prompts, ...)`."""

    def __init__(self, config: CascadeConfig, text_encoder=None):
        super().__init__()
        self.config = config
        self.unets = nn.ModuleList([build_unet(s.unet) for s in config.stages])
        self.ema_unets: nn.ModuleList | None = None  # set by Trainer / from_pretrained; sampled by default
        self.schedules = [NoiseSchedule(s.num_train_timesteps, s.beta_schedule) for s in config.stages]
        self._text_encoder = text_encoder  # frozen, not part of state_dict; loaded lazily by name

    @property
    def num_stages(self) -> int:
        return len(self.config.stages)

    @property
    def device(self) -> torch.device:
        return next(self.unets.parameters()).device

    # ---------------------------------------------------------------- text
    @property
    def text_encoder(self):
        """The frozen text encoder named in the config, loaded on first use (never silently replaced)."""
        if self._text_encoder is None:
            self._text_encoder = load_text_encoder(self.config.text_encoder, max_length=self.config.max_length)
        return self._text_encoder

    def set_text_encoder(self, encoder) -> None:
        if encoder.embed_dim != self.config.text_embed_dim:
            raise ValueError(f"text encoder {encoder.name!r} gives {encoder.embed_dim}-d tokens but this cascade was "
                             f"built for {self.config.text_embed_dim}-d ({self.config.text_encoder!r})")
        self._text_encoder = encoder

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (text_embeds [B, L, D] float32, text_mask [B, L] bool), on the U-Nets' device."""
        embeds, mask = self.text_encoder.encode(captions)
        return embeds.to(self.device, torch.float32), mask.to(self.device)

    # ---------------------------------------------------------------- training
    def training_draws(self, stage: int, batch: int, generator: torch.Generator | None = None,
                       device: torch.device | None = None) -> "TrainingDraws":
        """Every random draw of a training batch of `batch` items (one row per item), on `device`."""
        cfg = self.config.stages[stage]
        device = device if device is not None else self.device
        gdev = generator.device if generator is not None else device
        size = cfg.image_size

        def rand(*shape):  # drawn on the generator's device (a CPU generator can't make CUDA noise), then moved
            return torch.randn(shape, generator=generator, device=gdev).to(device)

        def randint(high, n):
            return torch.randint(0, high, (n,), generator=generator, device=gdev).to(device)

        noise = rand(batch, 3, size, size)                                   # eps ~ N(0, I)
        noise_level = lowres_noise = top = left = None
        if cfg.is_super_resolution:
            noise_level = randint(cfg.train_noise_level_max, batch)         # aug level ~ U{0, ..., max-1}
            lowres_noise = rand(batch, 3, size, size)                        # noise of the low-res condition
            if cfg.crop_size is not None:                                    # one window per item
                top = randint(size - cfg.crop_size + 1, batch)
                left = randint(size - cfg.crop_size + 1, batch)
        t = randint(self.schedules[stage].num_train_timesteps, batch)       # t ~ U{0, ..., T-1}
        drop_text = torch.rand(batch, generator=generator, device=gdev).to(device) < cfg.cond_drop_prob  # CFG
        return TrainingDraws(noise=noise, t=t, drop_text=drop_text, noise_level=noise_level,
                             lowres_noise=lowres_noise, crop_top=top, crop_left=left)

    def training_loss(
        self,
        stage: int,
        images: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        generator: torch.Generator | None = None,
        lowres_images: torch.Tensor | None = None,
        unet: nn.Module | None = None,
        draws: "TrainingDraws | None" = None,
    ) -> torch.Tensor:
        """The diffusion loss of one stage on a batch: `diffusion.diffusion_loss` (DDPM Algorithm 1) plus what is
        Imagen's: the text condition with caption dropout, and for SR stages the low-res condition and crops.

        images: [B, 3, H, W] in [0, 1] at this stage's image_size. For an SR stage the low-res condition is
        made from `images` (downsampled to the previous stage's size) unless `lowres_images` [B, 3, h, w]
        is given. `unet` overrides the stage's network (e.g. a DistributedDataParallel wrapper). `draws`: the
        batch's random draws (see `TrainingDraws`); default: drawn here from `generator`.
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages - 1}] (0 = base), got {stage}")
        cfg = self.config.stages[stage]
        unet = unet if unet is not None else self.unets[stage]
        self._check_images(images, cfg.image_size, "images")
        if lowres_images is not None and cfg.is_super_resolution:
            self._check_images(lowres_images, self.config.stages[stage - 1].image_size, "lowres_images")
        batch = images.shape[0]
        check_text(text_embeds, text_mask, batch, self.config.text_embed_dim)
        if draws is None:
            draws = self.training_draws(stage, batch, generator, images.device)
        elif draws.t.shape != (batch,):
            raise ValueError(f"draws holds the draws of {draws.t.shape[0]} items but images has {batch}; "
                             "pass draws.select(rows) for this batch's rows")

        x0, eps, lowres_cond = images * 2 - 1, draws.noise, None  # [0, 1] -> [-1, 1]
        if cfg.is_super_resolution:
            prev_size = self.config.stages[stage - 1].image_size
            if lowres_images is None:
                lowres_images = downsample(images, prev_size)  # what the previous stage would have produced
            lowres_cond = prepare_lowres_condition(lowres_images, cfg.image_size, draws.noise_level,
                                                   noise=draws.lowres_noise)
            if cfg.crop_size is not None:  # one random window per item, shared by target, condition and noise
                x0, lowres_cond, eps = _crop((x0, lowres_cond, eps), cfg.crop_size, draws.crop_top, draws.crop_left)

        def model_fn(x_t, t):  # the U-Net, conditioned on the caption (dropped for CFG) and the low-res image
            return unet(x_t, t, text_embeds, text_mask, lowres_image=lowres_cond, noise_level=draws.noise_level,
                        drop_text=draws.drop_text)
        return diffusion_loss(model_fn, x0, self.schedules[stage].alphas_cumprod, cfg.prediction_type,
                              t=draws.t, noise=eps, min_snr_gamma=cfg.min_snr_gamma)

    @staticmethod
    def _check_images(images: torch.Tensor, size: int, name: str) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name} must be a float tensor [B, 3, {size}, {size}] in [0, 1], got {shape}")
        if images.shape[-2:] != (size, size):
            raise ValueError(f"{name} must be {size}x{size} for this stage, got {images.shape[-2]}x{images.shape[-1]}; "
                             "resize them or pick the stage whose image_size matches")
        if isinstance(images, torch.Tensor) and images.dtype == torch.float64:
            raise ValueError(f"{name} is float64; the U-Nets compute in float32: pass {name}.float()")
        check_images(images, name)  # float, values in [0, 1]: uint8 or [-1, 1] images would train silently wrong

    # ---------------------------------------------------------------- sampling
    def __call__(self, prompts=None, **kwargs):
        """Text -> images through every stage; see `sampling.sample_cascade` for the arguments."""
        from .sampling import sample_cascade
        return sample_cascade(self, prompts, **kwargs)

    def sampling_unet(self, stage: int, use_ema: bool = True) -> nn.Module:
        if use_ema and self.ema_unets is not None:
            return self.ema_unets[stage]
        return self.unets[stage]

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path, ema_only: bool = False, dtype: torch.dtype | None = None) -> Path:
        """config.json + one safetensors file per stage (raw, and EMA when present). Atomic; no pickle.
        ema_only / dtype=torch.float16 make a small file for sharing (see checkpoint.save_cascade)."""
        return checkpoint.save_cascade(self, directory, ema_only=ema_only, dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        text_encoder=None) -> "Cascade":
        """Rebuild a cascade saved by `save_pretrained` (safetensors + JSON only: nothing is executed)."""
        config_dict = checkpoint.read_cascade_config(directory)
        try:
            config = CascadeConfig.from_dict(config_dict)
        except (TypeError, ValueError) as err:
            raise checkpoint.CheckpointError(f"{Path(directory) / 'config.json'} describes an invalid cascade: "
                                             f"{err}") from err
        cascade = cls(config, text_encoder=text_encoder)
        checkpoint.load_cascade_weights(cascade, directory)
        if device is not None:
            cascade.to(device)
        return cascade.eval()


def _crop(tensors: tuple[torch.Tensor, ...], size: int, top: torch.Tensor, left: torch.Tensor):
    """Crop the size x size window at (top[i], left[i]) out of item i of each [B, C, H, W] tensor."""
    top, left = top.tolist(), left.tolist()
    return tuple(
        torch.stack([x[i, :, top[i]:top[i] + size, left[i]:left[i] + size] for i in range(len(top))])  # [B, C, s, s]
        for x in tensors
    )


@dataclass
class TrainingDraws:
    """Every random draw of one training batch (DDPM Algorithm 1 + Imagen's conditioning), one row per item:
    the noise and timestep of Algorithm 1, the caption-dropout mask, and for SR stages the augmentation level,
    its noise and the crop corners.

    `Trainer` draws it once for the whole global batch and each rank / micro-batch takes its rows with
    `select`, so a step is the same on 1 process, on N (DistributedDataParallel) or in micro-batches.
    """

    noise: torch.Tensor                       # [B, 3, S, S] eps for q_sample (S = image_size; cropped with it)
    t: torch.Tensor                           # [B] long timesteps in [0, T)
    drop_text: torch.Tensor                   # [B] bool: caption replaced by the null embedding (CFG dropout)
    noise_level: torch.Tensor | None = None   # SR stages: [B] long augmentation levels
    lowres_noise: torch.Tensor | None = None  # SR stages: [B, 3, S, S] noise added to the low-res condition
    crop_top: torch.Tensor | None = None      # cropped SR stages: [B] long top-left corner of each window
    crop_left: torch.Tensor | None = None

    def select(self, rows) -> "TrainingDraws":
        """The draws of some rows (an index tensor or a slice) of the batch."""
        return TrainingDraws(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                                for f in dataclasses.fields(self)})
