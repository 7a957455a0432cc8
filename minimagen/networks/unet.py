"""Imagen's U-Nets: the text-conditioned base model and the Efficient U-Net super-resolution stages.

Paper: Saharia et al. 2022, Sec. 2.5 (architecture), App. B.1 (Efficient U-Net), App. D.3.1 (text
conditioning), App. F (the three models). Layers live in `blocks.py`, configs and presets in `configs.py`.

What one forward pass does, given a noisy image x_t, its timestep t and the caption's tokens:

    emb     = MLP(sinusoid(t)) [+ MLP(sinusoid(noise_level))] + AttentionPool(text)      (Sec. 2.5)
    h       = conv3x3(x_t [++ upsampled low-res image])                                    (SR: App. F.2)
    encoder : blocks of [downsample?] -> ResBlocks (FiLM'ed by emb) -> attention over pixels+text
    decoder : mirror image, each block fed the matching encoder output (a "skip")
    out     = conv3x3(SiLU(GN(h)))        (starts at zero: a fresh U-Net predicts 0)

Regular layout (base 64x64, adapted from ADM, App. F.1): a level's ResBlocks run at the level's resolution
and the next level starts with a stride-2 conv; each decoder block concatenates the output of its mirror
encoder block. (ADM's decoder has one extra block per level for the skips of its downsample layers; we
mirror the encoder exactly, which is simpler and ~1/3 cheaper in the decoder.)
Efficient layout (SR, App. B.1): every level starts with a stride-2 conv, so no ResBlock runs at full
resolution; low levels get more ResBlocks; one skip per level is *added*; residual sums and skip sums are
scaled by 1/sqrt(2); decoder blocks upsample (nearest x2 + conv3x3) after their convs.

Where the text goes: after every ResBlock at a resolution in `attn_resolutions` sits a self-attention layer
whose keys/values are the pixels plus the text tokens; a resolution only in `cross_attn_resolutions` gets one
text-only cross-attention layer at the end of each block. A stage without self-attention and position
embedding is fully convolutional: train it on crops, run it on the full image (the paper's 1024 stage).
Rows with `drop_text` see only a learned null token: classifier-free guidance's unconditional branch.

Contents: `Block` (the unit both layouts are made of), `UNet`, `build_unet`, `count_parameters`.
Memory format: the U-Net works in NCHW or channels_last (`model.to(memory_format=torch.channels_last)`);
on the 2-core CPU both measured the same within noise (`python -m minimagen.tools.benchmark --no-channels-last`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minimagen.networks.blocks import (Attention, AttentionPool, Downsample, ResBlock, TextContext, Upsample,
                                       group_norm, timestep_embedding)
from minimagen.networks.configs import UNET_PRESETS, UNetConfig, unet_config

__all__ = ["UNet", "UNetConfig", "UNET_PRESETS", "unet_config", "build_unet", "count_parameters"]


class Block(nn.Module):
    """skip? -> downsample? -> [ResBlock | Attention]* -> upsample?   (a DBlock or UBlock, Fig. A.28-A.29)

    skip_mode: "concat" (regular decoder: cat on channels), "add" (efficient decoder: (h + skip) / sqrt(2)),
    or None (encoder blocks, and the lowest efficient decoder block, which continues from the encoder).
    """

    def __init__(self, layers: list[nn.Module], down: nn.Module | None = None, up: nn.Module | None = None,
                 skip_mode: str | None = None):
        super().__init__()
        self.down, self.layers, self.up, self.skip_mode = down, nn.ModuleList(layers), up, skip_mode

    def forward(self, h, skip, emb_act, context, context_mask):
        if self.skip_mode == "concat":
            h = torch.cat([h, skip], dim=1)  # (B, C_h + C_skip, H, W)
        elif self.skip_mode == "add":
            h = (h + skip) * 2 ** -0.5  # variance-preserving sum of two unit-variance signals
        if self.down is not None:
            h = self.down(h)
        for layer in self.layers:
            h = layer(h, emb_act) if isinstance(layer, ResBlock) else layer(h, context, context_mask)
        return self.up(h) if self.up is not None else h


class UNet(nn.Module):
    """Text-conditioned U-Net for one Imagen stage; the layout is chosen by `config.efficient`."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        emb_dim, ch = c.emb_dim, c.level_channels
        # ---- conditioning: timestep (+ noise level) + pooled text -> one embedding vector (Sec. 2.5)
        self.time_mlp = nn.Sequential(nn.Linear(c.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.noise_level_mlp = (nn.Sequential(nn.Linear(c.base_channels, emb_dim), nn.SiLU(),
                                              nn.Linear(emb_dim, emb_dim)) if c.lowres_cond else None)
        self.text_context = TextContext(c.text_embed_dim, c.text_context_dim)
        self.text_pool = AttentionPool(self.text_context.dim, emb_dim)
        # ---- input: noisy image [++ low-res image upsampled to the same size] -> base_channels
        self.input_conv = nn.Conv2d(c.in_channels * (2 if c.lowres_cond else 1), ch[0], 3, padding=1)
        self.position = (nn.Parameter(torch.zeros(1, ch[0], c.image_size, c.image_size))
                         if c.position_embedding else None)
        self.encoder, self.middle, self.decoder = (self._build_efficient() if c.efficient else self._build_regular())
        self.out = nn.Sequential(group_norm(ch[0]), nn.SiLU(), nn.Conv2d(ch[0], c.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # zero-initialised last conv: no checkerboard at init, 0 prediction
        nn.init.zeros_(self.out[-1].bias)

    # ---- layouts -----------------------------------------------------------------------------------------
    def _res(self, in_ch: int, out_ch: int) -> ResBlock:
        c = self.config
        return ResBlock(in_ch, out_ch, c.emb_dim, c.dropout, scale_residual=c.efficient)

    def _attention(self, channels: int, self_attention: bool) -> Attention:
        c = self.config
        return Attention(channels, c.heads_at(channels), c.head_dim, self.text_context.dim, self_attention)

    def _layers(self, in_ch: int, out_ch: int, num_res: int, resolution: int) -> list[nn.Module]:
        """num_res ResBlocks, each followed by self-attention (keys/values: pixels + text) if `resolution` is
        in attn_resolutions; else one text cross-attention layer at the end if it is in cross_attn_resolutions."""
        c, layers = self.config, []
        for j in range(num_res):
            layers.append(self._res(in_ch if j == 0 else out_ch, out_ch))
            if resolution in c.attn_resolutions:
                layers.append(self._attention(out_ch, self_attention=True))
        if resolution in c.cross_attn_resolutions and resolution not in c.attn_resolutions:
            layers.append(self._attention(out_ch, self_attention=False))
        return layers

    def _build_regular(self):
        """Base model (ADM-like, App. F.1): one ResBlock (+ attention) per block, a skip after each."""
        c, ch, res = self.config, self.config.level_channels, self.config.level_resolutions
        encoder, decoder, prev = [], [], ch[0]
        for i, n in enumerate(c.res_blocks_per_level):
            for j in range(n):
                down = Downsample(prev, prev) if (i > 0 and j == 0) else None  # halve, then convolve
                encoder.append(Block(self._layers(prev, ch[i], 1, res[i]), down=down))
                prev = ch[i]
        mid_attention = self._layers(ch[-1], ch[-1], 1, res[-1])[1:]  # the attention layer (if any) of this level
        middle = Block([self._res(ch[-1], ch[-1]), *mid_attention, self._res(ch[-1], ch[-1])])
        for i in reversed(range(c.num_levels)):
            n = c.res_blocks_per_level[i]
            for j in range(n):
                up = Upsample(ch[i], ch[i - 1]) if (i > 0 and j == n - 1) else None  # convolve, then double
                decoder.append(Block(self._layers(prev + ch[i], ch[i], 1, res[i]), up=up, skip_mode="concat"))
                prev = ch[i - 1] if up is not None else ch[i]
        return nn.ModuleList(encoder), middle, nn.ModuleList(decoder)

    def _build_efficient(self):
        """Efficient U-Net (App. B.1, Fig. A.28-A.30): one DBlock and one UBlock per level, one skip each."""
        c, ch, res = self.config, self.config.level_channels, self.config.level_resolutions
        encoder, decoder = [], []
        for i, n in enumerate(c.res_blocks_per_level):
            down = Downsample(ch[i - 1] if i > 0 else ch[0], ch[i])  # downsample *before* the convs
            encoder.append(Block(self._layers(ch[i], ch[i], n, res[i]), down=down))
        for i in reversed(range(c.num_levels)):
            up = Upsample(ch[i], ch[i - 1] if i > 0 else ch[0])  # upsample *after* the convs
            skip_mode = "add" if i < c.num_levels - 1 else None  # the lowest UBlock continues from the DBlock
            decoder.append(Block(self._layers(ch[i], ch[i], c.res_blocks_per_level[i], res[i]), up=up,
                                 skip_mode=skip_mode))
        return nn.ModuleList(encoder), None, nn.ModuleList(decoder)

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor,
                text_mask: torch.Tensor | None, lowres_image: torch.Tensor | None = None,
                noise_level: torch.Tensor | None = None, drop_text: torch.Tensor | None = None) -> torch.Tensor:
        """Predict from x [B, in_channels, H, W] at timesteps [B]; returns [B, out_channels, H, W].

        text_embeds [B, L, text_embed_dim] with text_mask [B, L] bool (True = real token; None = all real);
        lowres_image [B, in_channels, H, W] (upsampled, in [-1, 1], already noise-augmented) and noise_level
        [B] (augmentation level 0..999) are required iff config.lowres_cond; drop_text [B] bool replaces the
        caption of those rows by the learned null (classifier-free guidance / caption dropout).
        Timesteps are used as given (long indices 0..T-1, or floats on the same scale).
        """
        c = self.config
        B = self._check_inputs(x, timesteps, text_embeds, text_mask, lowres_image, noise_level, drop_text)
        if text_mask is None:
            text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
        timesteps = torch.as_tensor(timesteps, device=x.device).expand(B)  # scalar -> (B,)
        context, context_mask = self.text_context(text_embeds, text_mask, drop_text)  # (B, 1+L, D), (B, 1+L)
        emb = self.time_mlp(timestep_embedding(timesteps, c.base_channels))  # (B, emb_dim)
        if self.noise_level_mlp is not None:
            noise_level = torch.as_tensor(noise_level, device=x.device).expand(B)
            emb = emb + self.noise_level_mlp(timestep_embedding(noise_level, c.base_channels))
        emb = emb + self.text_pool(context, context_mask)
        emb_act = F.silu(emb)  # every ResBlock's FiLM projection reads SiLU(emb): compute it once

        h = self.input_conv(torch.cat([x, lowres_image], dim=1) if c.lowres_cond else x)  # (B, C0, H, W)
        if self.position is not None:
            h = h + self.position
        h0, skips = h, []
        for block in self.encoder:
            h = block(h, None, emb_act, context, context_mask)
            skips.append(h)
        if self.middle is not None:
            h = self.middle(h, None, emb_act, context, context_mask)
        for block in self.decoder:
            h = block(h, skips.pop(), emb_act, context, context_mask)
        if c.efficient:
            h = (h + h0) * 2 ** -0.5  # skip from the full-resolution input conv (no ResBlock runs up here)
        return self.out(h)

    def _check_inputs(self, x, timesteps, text_embeds, text_mask, lowres_image, noise_level, drop_text) -> int:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be [B, {c.in_channels}, H, W], got {tuple(x.shape)}")
        B, _, H, W = x.shape
        for name, value in (("timesteps", timesteps), ("noise_level", noise_level)):
            shape = torch.as_tensor(value).shape if value is not None else ()
            if len(shape) > 1 or (shape and shape[0] not in (1, B)):
                raise ValueError(f"{name} must be a scalar or have shape [{B}] (one per image), got {tuple(shape)}")
        factor = 2 ** c.num_downsamples
        if c.fully_convolutional:
            if H % factor or W % factor:
                raise ValueError(f"x is {H}x{W}; this fully convolutional U-Net needs sides divisible by "
                                 f"2**{c.num_downsamples} = {factor}")
        elif (H, W) != (c.image_size, c.image_size):
            why = "self-attention" if c.attn_resolutions else "a position embedding"
            raise ValueError(f"x is {H}x{W} but this U-Net (with {why}) runs at image_size {c.image_size}; "
                             f"only a stage without self-attention and position embedding runs at other sizes")
        if text_embeds.dim() != 3 or text_embeds.shape[0] != B or text_embeds.shape[-1] != c.text_embed_dim:
            raise ValueError(f"text_embeds must be [B={B}, L, text_embed_dim={c.text_embed_dim}], got "
                             f"{tuple(text_embeds.shape)}; build the U-Net with text_embed_dim equal to your "
                             f"text encoder's width")
        if text_mask is not None and (text_mask.dtype != torch.bool or text_mask.shape != text_embeds.shape[:2]):
            raise ValueError(f"text_mask must be a bool tensor of shape {tuple(text_embeds.shape[:2])}, got "
                             f"{text_mask.dtype} {tuple(text_mask.shape)}")
        if drop_text is not None and (drop_text.dtype != torch.bool or drop_text.shape != (B,)):
            raise ValueError(f"drop_text must be a bool tensor of shape ({B},), got {drop_text.dtype} "
                             f"{tuple(drop_text.shape)}")
        if c.lowres_cond:
            if lowres_image is None or noise_level is None:
                raise ValueError("this is a super-resolution U-Net (lowres_cond=True): pass lowres_image "
                                 "[B, C, H, W] (upsampled to x's size) and noise_level [B]")
            if lowres_image.shape != x.shape:
                raise ValueError(f"lowres_image must be upsampled to x's shape {tuple(x.shape)}, got "
                                 f"{tuple(lowres_image.shape)}")
        elif lowres_image is not None or noise_level is not None:
            raise ValueError("lowres_image / noise_level given to a U-Net built with lowres_cond=False")
        return B


def build_unet(config: UNetConfig) -> UNet:
    """The U-Net for `config` (one class handles both layouts; kept as the factory others call)."""
    return UNet(config)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (works on the `meta` device, where no memory is allocated)."""
    return sum(p.numel() for p in module.parameters())
