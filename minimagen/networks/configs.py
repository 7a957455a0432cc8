"""Typed configuration and named presets for Imagen's U-Nets (Saharia et al. 2022, Sec. 2.5, App. B.1, App. F).

One `UNetConfig` describes every stage of the cascade. Two layouts share it:

* the regular U-Net of the 64x64 base model (App. F.1, adapted from Dhariwal & Nichol's ADM): at each
  level `num_res_blocks` residual blocks run at the level's resolution, *then* the features are
  downsampled; the decoder mirrors it and upsamples *after* its residual blocks;
* the Efficient U-Net of the super-resolution stages (`efficient=True`, App. B.1, Fig. A.27-A.30,
  App. F.2-F.3): every level *starts* with a stride-2 downsampling conv (so no residual block ever runs at
  the full output resolution), residual sums and U-Net skips are scaled by 1/sqrt(2), and lower levels get
  more residual blocks.

Resolutions in `attn_resolutions` / `cross_attn_resolutions` are in pixels at `image_size`:

    regular:   level i runs at image_size / 2**i        (len(channel_mults) - 1 downsamples)
    efficient: level i runs at image_size / 2**(i + 1)  (len(channel_mults) downsamples)

Contents: `UNetConfig` (validated dataclass, JSON round trip), `UNET_PRESETS`, `unet_config(name, **overrides)`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def level_resolutions(image_size: int, num_levels: int, efficient: bool) -> tuple[int, ...]:
    """Feature-map side of each level: image_size / 2**i (regular layout) or / 2**(i + 1) (efficient layout)."""
    first = 1 if efficient else 0
    return tuple(image_size // 2 ** (i + first) for i in range(num_levels))


@dataclass(kw_only=True)
class UNetConfig:
    image_size: int  # side of the square images it denoises (last SR stage: the crop size it trains on)
    in_channels: int = 3  # channels of the noisy image x_t (3 = RGB)
    out_channels: int = 3  # channels it predicts (3 = eps or x_0 for RGB)
    base_channels: int  # width of the first level; level i has base_channels * channel_mults[i]
    channel_mults: tuple[int, ...]  # one width multiplier per level, highest resolution first
    num_res_blocks: int | tuple[int, ...]  # residual blocks per level (an int = the same at every level)
    attn_resolutions: tuple[int, ...] = ()  # resolutions with self-attention whose keys/values also see the text
    cross_attn_resolutions: tuple[int, ...] = ()  # resolutions with text cross-attention (text-only keys/values)
    num_heads: int | None = None  # attention heads; None = channels // head_dim at each level (ADM's per_head_channels)
    head_dim: int = 64  # width of one attention head (the paper's base model uses 64)
    text_embed_dim: int  # width of the text encoder's tokens (384 MiniLM, 512 t5-small, 4096 t5-v1_1-xxl)
    text_context_dim: int | None = None  # width text is projected to once (after LayerNorm) for all attention
    # layers; None = no projection (fine for small encoders; the paper presets project T5-XXL's 4096 down)
    lowres_cond: bool = False  # super-resolution stage: also takes lowres_image + noise_level
    efficient: bool = False  # Efficient U-Net layout (paper App. B.1) instead of the regular ADM layout
    dropout: float = 0.0  # dropout inside residual blocks (the paper uses 0 for all three stages)
    position_embedding: bool = False  # learned per-pixel embedding at the input resolution; base stages only
    # (captions like "in the top left" need it: padded convs only weakly know where they are). An SR stage
    # gets position from its low-res image, and a position embedding would tie the crop-trained last stage to
    # one image size, so lowres_cond=True together with position_embedding=True is an error.

    def __post_init__(self) -> None:
        for name in ("channel_mults", "attn_resolutions", "cross_attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):  # a bare int is the usual slip: (8) instead of (8,)
                raise TypeError(f"{name} must be a tuple of ints, got {value!r}; write ({value!r},) for one entry")
            setattr(self, name, tuple(value))
        for name in ("lowres_cond", "efficient", "position_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.num_res_blocks, list):
            self.num_res_blocks = tuple(self.num_res_blocks)
        self._validate()

    # ---- derived quantities (used by UNet) -----------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def num_downsamples(self) -> int:
        # the efficient layout downsamples at the start of every level, the regular one between levels
        return self.num_levels if self.efficient else self.num_levels - 1

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def res_blocks_per_level(self) -> tuple[int, ...]:
        if isinstance(self.num_res_blocks, int):
            return (self.num_res_blocks,) * self.num_levels
        return tuple(self.num_res_blocks)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Feature-map side of each level when the input is image_size x image_size."""
        return level_resolutions(self.image_size, self.num_levels, self.efficient)

    @property
    def emb_dim(self) -> int:
        return 4 * self.base_channels  # width of the timestep/conditioning embedding (ADM: 4x model width)

    @property
    def fully_convolutional(self) -> bool:
        """True when nothing ties the network to image_size: no self-attention over pixels and no position
        embedding (text cross-attention is fine: its keys are text tokens). Such a U-Net can train on crops
        and run on full images (the paper's 256->1024 stage)."""
        return not self.attn_resolutions and not self.position_embedding

    def heads_at(self, channels: int) -> int:
        return self.num_heads if self.num_heads is not None else channels // self.head_dim

    # ---- validation ------------------------------------------------------------------------------------
    def _validate(self) -> None:
        def positive_int(name: str, value) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

        positive_int("image_size", self.image_size)
        positive_int("in_channels", self.in_channels)
        positive_int("out_channels", self.out_channels)
        positive_int("base_channels", self.base_channels)
        if self.base_channels % 2:
            raise ValueError(f"base_channels must be even (the sinusoidal timestep embedding has base_channels "
                             f"dims, half sin and half cos), got {self.base_channels}; use {self.base_channels + 1}")
        if not self.channel_mults:
            raise ValueError("channel_mults must name at least one level, e.g. (1, 2, 4)")
        for i, m in enumerate(self.channel_mults):
            positive_int(f"channel_mults[{i}]", m)
        if isinstance(self.num_res_blocks, int) and not isinstance(self.num_res_blocks, bool):
            positive_int("num_res_blocks", self.num_res_blocks)
        else:
            if len(self.num_res_blocks) != self.num_levels:
                raise ValueError(f"num_res_blocks has {len(self.num_res_blocks)} entries but channel_mults has "
                                 f"{self.num_levels} levels; give one count per level or a single int")
            for i, n in enumerate(self.num_res_blocks):
                positive_int(f"num_res_blocks[{i}]", n)
        factor = 2 ** self.num_downsamples
        if self.image_size % factor:
            lower = self.image_size // factor * factor
            fix = f"use {lower} or {lower + factor}" if lower else f"use {factor}"
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{self.num_downsamples} = {factor} "
                             f"({self.num_downsamples} downsamples); {fix}, or use fewer channel_mults")
        for name in ("attn_resolutions", "cross_attn_resolutions"):
            for r in getattr(self, name):
                if r not in self.level_resolutions:
                    raise ValueError(f"{name} contains {r}, but this U-Net's levels run at resolutions "
                                     f"{self.level_resolutions} (image_size {self.image_size}, "
                                     f"{'efficient' if self.efficient else 'regular'} layout); pick from those")
        if self.num_heads is not None:
            positive_int("num_heads", self.num_heads)
        positive_int("head_dim", self.head_dim)
        if self.num_heads is None:
            for ch, r in zip(self.level_channels, self.level_resolutions):
                if r in self.attn_resolutions + self.cross_attn_resolutions and ch % self.head_dim:
                    raise ValueError(f"num_heads=None means channels // head_dim heads, but level at resolution "
                                     f"{r} has {ch} channels, not divisible by head_dim {self.head_dim}; "
                                     f"set num_heads explicitly or change head_dim")
        positive_int("text_embed_dim", self.text_embed_dim)
        if self.text_context_dim is not None:
            positive_int("text_context_dim", self.text_context_dim)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.position_embedding and self.lowres_cond:
            raise ValueError("position_embedding=True is for base stages only: a super-resolution stage gets "
                             "position from its low-res image, and the last stage must stay fully convolutional "
                             "to train on crops; set position_embedding=False")

    # ---- JSON round trip ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {sorted(unknown)}; known fields are {sorted(known)}")
        return cls(**d)


# Paper presets take T5-v1.1-XXL tokens (4096 wide). Parameter counts here vs the paper (Sec. 4.1), tested
# within +-20 %: imagen-base-64 1814 M vs ~2 B (-9 %), imagen-sr-256 638 M vs ~600 M (+6 %),
# imagen-sr-1024 453 M vs ~400 M (+13 %). UNET_PRESET_NOTES says which appendix each follows and what we chose.
UNET_PRESETS: dict[str, UNetConfig] = {
    # ---- tiny: tests and CPU training (text width 384 = all-MiniLM-L6-v2) ----
    "base-tiny": UNetConfig(image_size=32, base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=1,
                            attn_resolutions=(8,), cross_attn_resolutions=(16, 8), num_heads=2, head_dim=32,
                            text_embed_dim=384),
    "sr-tiny": UNetConfig(image_size=64, base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=(1, 1, 2),
                          attn_resolutions=(8,), cross_attn_resolutions=(8,), num_heads=2, head_dim=32,
                          text_embed_dim=384, lowres_cond=True, efficient=True),
    "sr-last-tiny": UNetConfig(image_size=32, base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=(1, 1, 2),
                               attn_resolutions=(), cross_attn_resolutions=(4,), num_heads=2, head_dim=32,
                               text_embed_dim=384, lowres_cond=True, efficient=True),
    # ---- the speed benchmark's reference scenario (python -m minimagen.tools.benchmark) ----
    "base32": UNetConfig(image_size=32, base_channels=64, channel_mults=(1, 2, 4), num_res_blocks=2,
                         attn_resolutions=(16, 8), cross_attn_resolutions=(16, 8), num_heads=4, head_dim=64,
                         text_embed_dim=512),
    # ---- the paper's three stages ----
    "imagen-base-64": UNetConfig(image_size=64, base_channels=512, channel_mults=(1, 2, 3, 4), num_res_blocks=3,
                                 attn_resolutions=(32, 16, 8), cross_attn_resolutions=(32, 16, 8),
                                 num_heads=None, head_dim=64, text_embed_dim=4096, text_context_dim=2048),
    "imagen-sr-256": UNetConfig(image_size=256, base_channels=128, channel_mults=(1, 2, 4, 8),
                                num_res_blocks=(2, 4, 8, 8), attn_resolutions=(16,), cross_attn_resolutions=(16,),
                                num_heads=8, head_dim=256, text_embed_dim=4096, text_context_dim=1024,
                                lowres_cond=True, efficient=True),
    "imagen-sr-1024": UNetConfig(image_size=256, base_channels=128, channel_mults=(1, 2, 4, 8),
                                 num_res_blocks=(2, 4, 8, 8), attn_resolutions=(), cross_attn_resolutions=(16,),
                                 num_heads=8, head_dim=256, text_embed_dim=4096, text_context_dim=1024,
                                lowres_cond=True, efficient=True),
}

UNET_PRESET_NOTES: dict[str, str] = {
    "imagen-base-64": "App. F.1: embed_dim 512, channel_mult [1,2,3,4], num_res_blocks 3, per_head_channels 64 "
                      "(num_heads=None), attention + text cross-attention at [32,16,8] implemented as one layer "
                      "whose keys/values are pixels + text (App. D.3.1), attention pooling, scale-shift norm, "
                      "dropout 0. Not pinned by the paper, chosen here: text projected once 4096 -> 2048 (the "
                      "widest level), stride-2 conv down / nearest+conv up instead of BigGAN resampling blocks, "
                      "a decoder that mirrors the encoder (3 blocks per level, not ADM's 4).",
    "imagen-sr-256": "App. F.2 + Fig. A.27-A.30: Efficient U-Net, blocks of 128/256/512/1024 channels with "
                     "2/4/8/8 ResBlocks, stride 2 each, self-attention whose keys/values see the text, 8 heads, "
                     "hidden size 2 x channels (8 x 256), in the last block. Not pinned, chosen here: a "
                     "self-attention layer after every ResBlock of that block (ADM's convention; one layer per "
                     "block would leave no room for the paper's 600 M vs 400 M gap to the 1024 stage), text "
                     "projected once 4096 -> 1024, timestep embedding 4 x 128 = 512 wide.",
    "imagen-sr-1024": "App. F.3: as imagen-sr-256 without self-attention: one text cross-attention layer at the end "
                      "of the lowest DBlock and UBlock (how many the paper does not say). Fully convolutional: "
                      "trained on 256x256 crops (image_size = crop size), run on full 1024x1024 images.",
}


def unet_config(preset: str, attn_levels: tuple[int, ...] | None = None,
                cross_attn_levels: tuple[int, ...] | None = None, **overrides) -> UNetConfig:
    """A preset with fields replaced, e.g. unet_config("base-tiny", text_embed_dim=512); re-validated.

    attn_levels / cross_attn_levels place attention by level index instead of by resolution (-1 = the lowest
    resolution), so one setting fits a stage of any image_size; they replace attn_resolutions /
    cross_attn_resolutions.
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    known = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown UNetConfig fields {sorted(unknown)} in overrides; known fields are {sorted(known)}")
    merged = {**dataclasses.asdict(UNET_PRESETS[preset]), **overrides}
    res = level_resolutions(merged["image_size"], len(merged["channel_mults"]), merged["efficient"])
    for name, levels in (("attn_resolutions", attn_levels), ("cross_attn_resolutions", cross_attn_levels)):
        if levels is not None:
            try:
                overrides[name] = tuple(res[i] for i in levels)  # level index -> that level's resolution
            except IndexError:
                raise ValueError(f"{name.replace('resolutions', 'levels')} {tuple(levels)} names a level this U-Net "
                                 f"does not have (it has {len(res)}: 0..{len(res) - 1}, or -1..-{len(res)})") from None
    return dataclasses.replace(UNET_PRESETS[preset], **overrides)
