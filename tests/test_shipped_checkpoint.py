"""The trained cascade shipped in checkpoints/shapes: it loads, samples, and follows its captions.

Goals (issue: train_small / shipped checkpoint), on prompts whose (colour, shape) pairs never occurred in
training: single objects colour >= 95 %, shape >= 90 %, position >= 90 %, all correct >= 75 %;
two objects all correct >= 40 %. Fixed seed, default sampling settings of the run preset it was trained with.
"""
from pathlib import Path

import pytest
import torch

from minimagen import Cascade
from minimagen.data.shapes import fixed_prompts
from minimagen.tools.report import score_samples
from minimagen.tools.run_presets import RUN_PRESETS

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes"


@pytest.fixture(scope="module")
def cascade():
    assert (CHECKPOINT / "config.json").exists(), f"{CHECKPOINT} is missing: it is part of the repository"
    return Cascade.from_pretrained(CHECKPOINT)


def test_shipped_checkpoint_samples_a_prompt_at_full_resolution(cascade):
    out = cascade("a large blue square in the top left", generator=torch.Generator().manual_seed(0),
                  output_type="pt", progress=False, **RUN_PRESETS["default"].sampling_kwargs())
    assert out.images.shape == (1, 3, 128, 128)
    assert 0 <= out.images.min() and out.images.max() <= 1


@pytest.mark.slow
def test_shipped_checkpoint_follows_new_combinations(cascade):
    preset = RUN_PRESETS["default"]
    single = score_samples(cascade, fixed_prompts("single_heldout", n=24, seed=100), preset, seed=0)["all"]
    assert single["color"] >= 0.95, single
    assert single["shape"] >= 0.90, single
    assert single["position"] >= 0.90, single
    assert single["all_correct"] >= 0.75, single
    two = score_samples(cascade, fixed_prompts("two_heldout", n=24, seed=101), preset, seed=0)["all"]
    assert two["all_correct"] >= 0.40, two
