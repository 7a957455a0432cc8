"""Checking the scenes domain: its pixel statistics beside the shapes', render speed, scorer accuracy.

    python -m minimagen.tools.scenes_check                       # all three tables, 300 scenes per resolution
    python -m minimagen.tools.scenes_check --n 100 --preview scenes.png

Prints (1) the fraction of pixel values at exactly 0 or 255, mean and std of both built-in domains,
(2) CPU milliseconds to render one scene at each size, (3) the scorer's per-attribute accuracy on real
renders: clean, with Gaussian noise (sigma 0.05), blurred (sigma 0.5 px at 32 px, the same in scene units
at every size) and both. Numbers depend only on the seed, except the timings.

Contents: `pixel_table`, `speed_table`, `accuracy_table`, `main`.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from ..data.scenes import ScenesDataset, preview_grid, random_scene, render_scene
from ..data.scenes_render import pixel_statistics
from ..data.scenes_scoring import score_alignment
from ..data.shapes import ShapesDataset

SIZES = (16, 32, 64, 128)
KEYS = ("color", "shape", "size", "material", "position", "relation", "count", "all_correct")


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a [3, H, W] tensor, kernel radius 3 sigma, edges replicated."""
    r = math.ceil(3 * sigma)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    k /= k.sum()                                                       # [2r + 1] taps
    h, w = image.shape[-2:]
    x = np.pad(image.numpy(), ((0, 0), (r, r), (r, r)), mode="edge")  # [3, H + 2r, W + 2r]
    rows = sum(k[j] * x[:, j:j + h, :] for j in range(2 * r + 1))     # [3, H, W + 2r]
    return torch.from_numpy(sum(k[j] * rows[:, :, j:j + w] for j in range(2 * r + 1)).astype(np.float32))


def pixel_table(n: int, seed: int = 0) -> list[str]:
    lines = ["size  domain  at 0/255   mean    std"]
    for size in (16, 32, 128):
        for name, ds in (("scenes", ScenesDataset(size=n, image_size=size, seed=seed, max_objects=3)),
                         ("shapes", ShapesDataset(size=n, image_size=size, seed=seed))):
            s = pixel_statistics(torch.stack([ds[i]["image"] for i in range(n)]))
            lines.append(f"{size:4d}  {name}  {s['fraction_at_0_or_1']:7.2%}  {s['mean']:6.3f}  {s['std']:6.3f}")
    return lines


def speed_table(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    specs = [random_scene(rng, "train", 3) for _ in range(n)]
    lines = []
    for size in (*SIZES, 256):
        render_scene(specs[0], size)                                   # fill the background cache
        start = time.process_time()
        for spec in specs:
            render_scene(spec, size)
        lines.append(f"render {size:4d} px: {(time.process_time() - start) / n * 1e3:5.2f} ms CPU a scene (1-3 objects)")
    return lines


def accuracy_table(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    specs = [random_scene(rng, "all", 3) for _ in range(n)]
    g = torch.Generator().manual_seed(seed)
    lines = [f"size  case   {' '.join(k[:8].rjust(8) for k in KEYS)}"]
    for size in SIZES:
        clean = [render_scene(s, size) for s in specs]
        blurred = [gaussian_blur(i, 0.5 * size / 32) for i in clean]
        cases = {"clean": clean, "noise": [(i + 0.05 * torch.randn(i.shape, generator=g)).clamp(0, 1) for i in clean],
                 "blur": blurred,
                 "both": [(i + 0.05 * torch.randn(i.shape, generator=g)).clamp(0, 1) for i in blurred]}
        for case, images in cases.items():
            r = score_alignment(images, specs)
            lines.append(f"{size:4d}  {case:5s}  {' '.join(f'{r[k]:8.3f}' for k in KEYS)}")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="scenes per resolution (accuracy) and per table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", default=None, help="also save a preview grid PNG here (32 and 128 px)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for table in (pixel_table(args.n, args.seed), speed_table(args.n, args.seed), accuracy_table(args.n, args.seed)):
        print("\n".join(table), end="\n\n")
    if args.preview:
        print("preview:", preview_grid(args.preview, n=6, sizes=(32, 128), seed=args.seed))


if __name__ == "__main__":
    main()
