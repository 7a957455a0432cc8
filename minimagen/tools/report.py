"""Evaluating a trained cascade on the captioned shapes: sample fixed prompts, score them, draw the grid.

`score_samples` runs the cascade on (caption, SceneSpec) pairs and scores every stage's images with
`scoring.score_alignment` (colour / shape / size / position / relation / all correct), the project's
stand-in for FID and CLIP score: it asks "does the image follow its caption?" and answers with a number.
`save_sample_grid` draws the prompts (rows) through the stages (columns), captions beside them.

Contents: `score_samples`, `sample_captions`, `save_sample_grid`, `json_safe`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.domains import load_domain


@torch.no_grad()
def score_samples(cascade, items: list, preset=None, num_stages: int | None = None, seed: int = 0,
                  keep_images: bool = False, chunk: int = 24, **sample_kwargs) -> dict:
    """Sample one image per (caption, spec) item and score each stage.

    Returns {"by_stage": [scores of stage 0, 1, ...], "all": scores of the last stage run,
             "captions": [...], "specs": [...], "images": [[N, 3, s, s] per stage] (if keep_images)}.
    Sampling settings come from `preset` (guidance_scale, num_inference_steps) unless given in sample_kwargs;
    the scorer is the preset's domain's (shapes when no preset is given).
    """
    captions = [c for c, _ in items]
    specs = [s for _, s in items]
    if preset is not None:
        for key, value in preset.sampling_kwargs(num_stages).items():
            sample_kwargs.setdefault(key, value)
    sample_kwargs.setdefault("progress", False)
    generator = torch.Generator().manual_seed(seed)
    per_stage: list[list[torch.Tensor]] = []
    for begin in range(0, len(captions), chunk):
        out = cascade(captions[begin:begin + chunk], output_type="pt", return_all_stages=True,
                      num_stages=num_stages, generator=generator, **sample_kwargs)
        for k, images in enumerate(out.all_stages):
            if len(per_stage) <= k:
                per_stage.append([])
            per_stage[k].append(images)
    stage_images = [torch.cat(chunks) for chunks in per_stage]  # [N, 3, s, s] per stage
    score_alignment = load_domain(getattr(preset, "domain", "shapes")).score_alignment
    by_stage = [score_alignment(images, specs) for images in stage_images]
    result = {"by_stage": by_stage, "all": by_stage[-1], "captions": captions, "specs": specs}
    if keep_images:
        result["images"] = stage_images
    return result


@torch.no_grad()
def sample_captions(cascade, captions: list[str], preset=None, seed: int = 0, **sample_kwargs) -> dict:
    """Sample captions without scoring (data with no ground-truth spec); same dict layout as score_samples."""
    if preset is not None:
        for key, value in preset.sampling_kwargs().items():
            sample_kwargs.setdefault(key, value)
    sample_kwargs.setdefault("progress", False)
    out = cascade(list(captions), output_type="pt", return_all_stages=True,
                  generator=torch.Generator().manual_seed(seed), **sample_kwargs)
    return {"by_stage": None, "captions": list(captions), "images": out.all_stages}


def save_sample_grid(results: dict, path: str | Path, sizes=None, per_set: int = 4, dpi: int = 100) -> Path:
    """Rows: the first `per_set` prompts of each evaluation set; columns: the stages; caption on the left."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for name, r in results.items():
        for i in range(min(per_set, len(r["captions"]))):
            rows.append((name, r["captions"][i], [images[i] for images in r["images"]]))
    n_stages = len(rows[0][2])
    fig, axes = plt.subplots(len(rows), n_stages + 1, figsize=(1.9 * n_stages + 3.4, 1.9 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.8] + [1] * n_stages})  # column 0: the caption
    for row, (name, caption, images) in enumerate(rows):
        axes[row][0].axis("off")
        axes[row][0].text(1.0, 0.5, f"{caption}\n({name.replace('_', ' ')})", fontsize=8, ha="right", va="center",
                          wrap=True, transform=axes[row][0].transAxes)
        for col, image in enumerate(images):
            ax = axes[row][col + 1]
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")  # [H, W, 3]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                side = image.shape[-1]
                ax.set_title(f"stage {col}: {side}x{side}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def json_safe(obj):
    """obj with every float NaN/inf replaced by None: json.dumps writes bare NaN, which most JSON parsers refuse."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
