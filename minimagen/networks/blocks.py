"""Layers that Imagen's U-Nets are built from (Saharia et al. 2022, Sec. 2.5, App. B.1, Fig. A.27-A.29).

How text reaches the image (Sec. 2.5, App. D.3.1):

* `TextContext` LayerNorms the frozen encoder's tokens once (the paper found LayerNorm on text in the
  attention and pooling layers "critical") and prepends one learned *null token*. Every attention layer
  attends over [null] + tokens with mask [True] + text_mask, so padded tokens get softmax weight exactly 0
  and are zeroed as well, and a caption with no valid tokens still has something to attend to (no NaN).
  Rows with `drop_text` keep only the null token: that is classifier-free guidance's unconditional branch.
* `AttentionPool` turns the same context into one pooled vector, added to the timestep embedding; a dropped
  row sees only the null token, so its pooled vector is a learned constant.
* `Attention` is either self-attention over pixels whose keys/values also include the text tokens
  (how the paper implements text cross-attention where a layer has self-attention) or, with
  `self_attention=False`, plain text cross-attention (queries = pixels, keys/values = text only).

Map: timestep_embedding (pure function) | TextContext | AttentionPool | ResBlock | Attention |
Downsample | Upsample | group_norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: t [B] -> [B, dim] (Transformer / DDPM).

    emb[:, i] = cos(t * w_i), emb[:, half + i] = sin(t * w_i), w_i = max_period ** (-i / half).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the width allows (gcd(32, channels) otherwise, for tiny models)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class TextContext(nn.Module):
    """LayerNorm (and optionally project) the text tokens and prepend a learned null token.

    Returns context [B, 1 + L, D] (D = context_dim, or text_embed_dim without projection) and
    context_mask [B, 1 + L] bool, True = may be attended to. Masked tokens are also set to 0, so whatever
    the caller put at padded positions (even inf) cannot leak through 0 * value.
    """

    def __init__(self, text_embed_dim: int, context_dim: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(text_embed_dim)
        # one shared projection (T5-XXL's 4096 -> a narrower width) instead of a 4096-wide k/v in every layer
        self.proj = nn.Linear(text_embed_dim, context_dim) if context_dim is not None else nn.Identity()
        self.dim = context_dim if context_dim is not None else text_embed_dim
        self.null_token = nn.Parameter(torch.randn(1, 1, self.dim))  # ~ the scale of a LayerNorm'ed token

    def forward(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, drop_text: torch.Tensor | None):
        B = text_embeds.shape[0]
        keep = text_mask if drop_text is None else text_mask & ~drop_text[:, None]  # (B, L)
        tokens = torch.where(keep[..., None], self.proj(self.norm(text_embeds)), 0.0)  # (B, L, D)
        context = torch.cat([self.null_token.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)  # (B, 1+L, D)
        context_mask = F.pad(keep, (1, 0), value=True)  # (B, 1+L): the null token is always visible
        return context, context_mask


class AttentionPool(nn.Module):
    """Pooled text embedding: a learned query attends over the context (paper's "attention pooling")."""

    def __init__(self, context_dim: int, out_dim: int, head_dim: int = 64):
        super().__init__()
        self.heads = context_dim // head_dim if context_dim % head_dim == 0 else 1
        self.query = nn.Parameter(torch.randn(1, self.heads, 1, context_dim // self.heads))
        self.to_kv = nn.Linear(context_dim, 2 * context_dim)
        self.to_out = nn.Linear(context_dim, out_dim)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        B, L, D = context.shape
        k, v = self.to_kv(context).view(B, L, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d)
        q = self.query.expand(B, -1, -1, -1).to(k.dtype)  # (B, h, 1, d)
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask[:, None, None, :])  # (B, h, 1, d)
        return self.to_out(pooled.reshape(B, D))  # (B, out_dim)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> scale-shift by the embedding -> SiLU -> dropout -> conv3x3, + shortcut.

    Fig. A.27 plus ADM's scale-shift norm (the paper's `use_scale_shift_norm: True`):
        h = GN(h) * (1 + scale) + shift,   (scale, shift) = Linear(SiLU(emb))
    `scale_residual` (Efficient U-Net): out = (shortcut(x) + h) / sqrt(2), which keeps the variance of a
    stack of 8 blocks from growing (App. B.1, following Song et al.'s NCSN++).
    The second conv starts at zero, so a fresh block is its shortcut (ADM's choice; trains deep stacks).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, scale_residual: bool = False):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.residual_scale = 2 ** -0.5 if scale_residual else 1.0

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        """x [B, in_ch, H, W]; emb_act = SiLU(emb) [B, emb_dim] (computed once per forward by the U-Net)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb_act)[:, :, None, None].chunk(2, dim=1)  # (B, out_ch, 1, 1) each
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # GN(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        out = self.shortcut(x) + h
        return out * self.residual_scale if self.residual_scale != 1.0 else out


class Attention(nn.Module):
    """Multi-head attention from pixels to [text tokens (+ the pixels themselves)], with a residual.

    self_attention=True : keys/values = text context + all pixels (App. D.3.1: "concatenating the text
                          embedding sequence to the key-value pairs of each self-attention layer").
    self_attention=False: keys/values = text context only (text cross-attention; the 1024 stage).
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + mask) V   with mask = -inf on padded text tokens.
    """

    def __init__(self, channels: int, num_heads: int, head_dim: int, context_dim: int, self_attention: bool):
        super().__init__()
        self.heads, self.head_dim, self.self_attention = num_heads, head_dim, self_attention
        inner = num_heads * head_dim
        self.norm = group_norm(channels)
        self.to_q = nn.Linear(channels, 3 * inner if self_attention else inner)  # q (and k, v of the pixels)
        self.to_text_kv = nn.Linear(context_dim, 2 * inner)
        self.to_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.to_out.weight)  # starts as identity, like ResBlock
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N, h, d = H * W, self.heads, self.head_dim
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(B, N, C)  # (B, HW, C); a view for channels_last x
        text_k, text_v = self.to_text_kv(context).chunk(2, dim=-1)  # (B, Lt, h*d) each
        mask = context_mask
        if self.self_attention:
            q, k, v = self.to_q(tokens).chunk(3, dim=-1)  # (B, HW, h*d) each
            k = torch.cat([text_k, k], dim=1)  # (B, Lt + HW, h*d)
            v = torch.cat([text_v, v], dim=1)  # (B, Lt + HW, h*d)
            mask = F.pad(context_mask, (0, N), value=True)  # (B, Lt + HW): pixels always visible
        else:
            q, k, v = self.to_q(tokens), text_k, text_v
        q = q.view(B, N, h, d).transpose(1, 2)  # (B, h, HW, d)
        k = k.view(B, -1, h, d).transpose(1, 2)  # (B, h, Lk, d)
        v = v.view(B, -1, h, d).transpose(1, 2)  # (B, h, Lk, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # (B, h, HW, d)
        out = self.to_out(out.transpose(1, 2).reshape(B, N, h * d))  # (B, HW, C)
        return x + out.view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last strides


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv (the Efficient U-Net's strided DBlock conv, Fig. A.28)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, out_ch, H/2, W/2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 conv. Unlike a transposed conv or
    pixel-shuffle every output pixel sees the same kernel footprint, so no checkerboard pattern."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, out_ch, 2H, 2W)
