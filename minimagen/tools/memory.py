"""GPU memory needed to train each stage of a run preset, computed without a GPU.

    python -m minimagen.tools.memory --preset gpu                    # one GPU
    python -m minimagen.tools.memory --preset gpu --processes 8      # each of 8 DDP processes

Two parts, both counted rather than guessed:
  * static, per parameter of the stage being trained: fp32 weights 4 B + gradients 4 B + AdamW's two moments
    8 B + the EMA copy 4 B = 20 B; plus 8 B (weights + EMA) per parameter of the other stages, which
    train_small keeps on the device. DDP adds gradient buckets (~4 B per parameter, shared with the
    gradients by `gradient_as_bucket_view`).
  * activations: the bytes of every tensor autograd saves for the backward pass, counted during one forward
    on the `meta` device (shapes only: no memory, no compute) with `torch.autograd.graph.saved_tensors_hooks`,
    at batch 2 minus batch 1 (the saved weights do not grow with the batch and are already counted).
    Counted in fp32, so it is an upper bound: under bf16 autocast most saved tensors take 2 bytes, and a
    tensor saved by two ops is counted twice.
Peak is about static + activations per image x micro-batch, plus the allocator's slack (10-20 %).

Contents: `activation_bytes`, `stage_memory`, `preset_memory`.
"""
from __future__ import annotations

import argparse

import torch

from ..networks.unet import build_unet

GIB = 2 ** 30


def activation_bytes(unet_config, batch: int = 1, text_len: int = 64, device: str = "meta") -> int:
    """Bytes of the tensors autograd saves for backward in one training forward of `batch` images (fp32),
    including the weights that ops like conv save (they are not extra memory)."""
    with torch.device(device):
        unet = build_unet(unet_config)
        S, D = unet_config.image_size, unet_config.text_embed_dim
        x = torch.randn(batch, unet_config.in_channels, S, S)
        kwargs = dict(text_embeds=torch.randn(batch, text_len, D), text_mask=torch.ones(batch, text_len, dtype=torch.bool))
        if unet_config.lowres_cond:
            kwargs.update(lowres_image=torch.randn(batch, unet_config.in_channels, S, S),
                          noise_level=torch.zeros(batch, dtype=torch.long))
        total = 0

        def count(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            unet(x, torch.zeros(batch, dtype=torch.long), **kwargs)
    return total


def stage_memory(cascade_config, stage: int, micro_batch: int) -> dict:
    """Bytes for training `stage` with `micro_batch` images per forward (see the module docstring)."""
    with torch.device("meta"):  # parameter shapes only
        params = [sum(p.numel() for p in build_unet(s.unet).parameters()) for s in cascade_config.stages]
    trained, others = params[stage], sum(params) - params[stage]
    static = 20 * trained + 8 * others
    unet, text_len = cascade_config.stages[stage].unet, cascade_config.max_length
    # saved tensors also include the weights (already in `static`); they do not grow with the batch
    per_image = activation_bytes(unet, 2, text_len) - activation_bytes(unet, 1, text_len)
    return {"stage": stage, "size": unet.image_size, "params": trained, "static_bytes": static,
            "activation_bytes_per_image": per_image, "micro_batch": micro_batch,
            "total_bytes": static + micro_batch * per_image}


def preset_memory(preset_name: str, processes: int = 1, grad_accum_steps: int | None = None,
                  text_embed_dim: int | None = None) -> list[dict]:
    """stage_memory of every stage of a run preset, its batch split over `processes` and micro-batches."""
    from .run_presets import RUN_PRESETS, build_cascade_config
    from ..text_encoder import text_embed_dim as known_width

    preset = RUN_PRESETS[preset_name]
    config = build_cascade_config(preset, text_embed_dim=text_embed_dim or known_width(preset.text_encoder))
    micro = max(1, preset.batch_size // processes // (grad_accum_steps or preset.grad_accum_steps))
    return [stage_memory(config, s, micro) for s in range(len(preset.sizes))]


def main(argv: list[str] | None = None) -> None:
    from .run_presets import RUN_PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpu", choices=sorted(RUN_PRESETS))
    parser.add_argument("--processes", type=int, default=1, help="DDP processes sharing the global batch")
    parser.add_argument("--grad-accum-steps", type=int, default=None, help="micro-batches per step (default: preset's)")
    args = parser.parse_args(argv)
    print(f"preset {args.preset!r}, {args.processes} process(es); GiB, fp32 activations (an upper bound)")
    for r in preset_memory(args.preset, args.processes, args.grad_accum_steps):
        print(f"  stage {r['stage']} ({r['size']} px trained): {r['params'] / 1e6:.0f} M params, static "
              f"{r['static_bytes'] / GIB:.1f} + {r['micro_batch']} x {r['activation_bytes_per_image'] / GIB:.2f} per "
              f"image = {r['total_bytes'] / GIB:.1f} GiB")


if __name__ == "__main__":
    main()
