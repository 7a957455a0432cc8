"""Helpers shared by the teaching notebooks: small inline figures, quiet output, image grids.

Not part of the minimagen package and nothing Imagen-specific lives here: the notebooks import the maths and
the models from `minimagen`; this file only draws pictures, so every notebook cell stays about one idea.

    setup_notebook()                   figures at DPI dots per inch, no transformers progress bars
    as_image(x)                        [3, H, W] tensor in [0, 1] -> [H, W, 3] numpy array for imshow
    show_grid(rows, ...)               rows of images with row and column labels, shown inline
"""
from __future__ import annotations

import textwrap
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

DPI = 72  # small PNGs: each notebook stays < 3 MB and nbval's 5 s wait for output is never an issue

# tqdm.auto (imported by minimagen for its optional progress bars) warns once that ipywidgets is missing;
# the notebooks never draw a progress bar, so the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found")


def setup_notebook() -> None:
    """Small inline figures, and no progress bars (nbval waits only 5 s for a cell's output)."""
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 9,
                         "axes.titlesize": 9, "figure.max_open_warning": 0})
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # transformers 5 draws a "Loading weights" bar on every from_pretrained


def as_image(x) -> np.ndarray:
    """[3, H, W] tensor in [0, 1] (or a PIL image) -> [H, W, 3] float array for plt.imshow."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()  # [H, W, 3]
    return np.asarray(x)


def show_grid(rows, row_labels=None, col_labels=None, size: float = 1.3, title: str | None = None) -> None:
    """Draw rows of images ([3, H, W] tensors in [0, 1]); pixels stay square (nearest-neighbour zoom)."""
    rows = [list(r) for r in rows]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    left = 1.4 if row_labels else 0.0  # room for the row labels
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols + left, size * n_rows + 0.35),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(as_image(row[j]), interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and col_labels:
                ax.set_title(textwrap.fill(str(col_labels[j]), 26), fontsize=8)
        if row_labels:
            axes[i][0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8, labelpad=4)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plt.show()
