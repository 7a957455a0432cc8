"""The playground's core (minimagen/tools/playground.py): settings in, every stage's image out, reproducibly.

What these tests prove, on an untrained three-stage "tiny" cascade (8 -> 16 -> 32 px, offline tiny-t5 encoder):
  * generate returns one (3, s, s) image in [0, 1] per stage, at the sizes of the cascade's config;
  * it is exactly `cascade(...)` with a seeded generator: same settings and seed, same images; another seed,
    other images; its settings reach the cascade unchanged;
  * noise_level touches only the super-resolution stages (the base image does not change);
  * its sampler choices are minimagen.diffusion.SAMPLERS, read at call time; bad choices are errors that name
    the allowed values;
  * make_figure draws one panel per stage, titled with the stage's size, with the settings in the title.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (no display in tests)

import matplotlib.pyplot as plt
import pytest
import torch

from minimagen import diffusion
from minimagen.cascade import Cascade, tiny_cascade_config
from minimagen.text_encoder import load_text_encoder
from minimagen.tools.playground import available_samplers, describe_settings, generate, make_figure

SIZES = (8, 16, 32)
FEW = dict(num_inference_steps=2)  # two denoising steps per stage: enough to exercise every path


@pytest.fixture(scope="module")
def cascade():
    encoder = load_text_encoder("tiny-t5")
    torch.manual_seed(0)
    cascade = Cascade(tiny_cascade_config(SIZES, text_embed_dim=encoder.embed_dim), text_encoder=encoder)
    with torch.no_grad():  # zero-initialised layers (e.g. each U-Net's last conv) would hide every input
        for parameter in cascade.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.normal_(0, 0.05)
    return cascade


def test_generate_returns_one_image_per_stage_at_the_configured_sizes(cascade):
    images = generate(cascade, "a red circle", **FEW)
    assert [tuple(im.shape) for im in images] == [(3, s, s) for s in SIZES]
    assert all(0 <= float(im.min()) and float(im.max()) <= 1 for im in images)


def test_same_seed_same_images_other_seed_other_images(cascade):
    first = generate(cascade, "a red circle", seed=3, **FEW)
    again = generate(cascade, "a red circle", seed=3, **FEW)
    other = generate(cascade, "a red circle", seed=4, **FEW)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_generate_is_the_cascade_call_with_a_seeded_generator(cascade):
    settings = dict(guidance_scale=[3.0, 1.0, 1.0], thresholding="static", dynamic_thresholding_ratio=0.9,
                    noise_level=250, sampler="ddpm", num_inference_steps=[3, 2, 2])
    mine = generate(cascade, "a blue square", seed=7, **settings)
    direct = cascade(["a blue square"], generator=torch.Generator().manual_seed(7), output_type="pt",
                     return_all_stages=True, progress=False, **settings).all_stages
    assert all(torch.equal(a, b[0]) for a, b in zip(mine, direct))


def test_noise_level_changes_only_the_super_resolution_stages(cascade):
    low = generate(cascade, "a green heart", noise_level=0, **FEW)
    high = generate(cascade, "a green heart", noise_level=900, **FEW)
    assert torch.equal(low[0], high[0])
    assert not torch.equal(low[1], high[1]) and not torch.equal(low[2], high[2])


def test_num_stages_stops_early_with_the_same_images_and_per_stage_lists_for_the_whole_cascade(cascade):
    settings = dict(guidance_scale=[3.0, 1.0, 1.0], thresholding=["dynamic", "static", "static"], **FEW)
    every = generate(cascade, "a red circle", **settings)
    first_two = generate(cascade, "a red circle", num_stages=2, **settings)
    assert [im.shape[-1] for im in first_two] == [8, 16]
    assert all(torch.equal(a, b) for a, b in zip(first_two, every))


def test_a_per_stage_list_needs_one_value_per_stage_of_the_cascade(cascade):
    with pytest.raises(ValueError, match="guidance_scale has 2 values but the cascade has 3 stages"):
        generate(cascade, "a red circle", guidance_scale=[3.0, 1.0], num_stages=2)


def test_sampler_choices_are_read_from_minimagen_diffusion_at_call_time(cascade, monkeypatch):
    assert available_samplers() == tuple(diffusion.SAMPLERS)
    monkeypatch.setattr(diffusion, "SAMPLERS", ("ddim",))
    assert available_samplers() == ("ddim",)
    with pytest.raises(ValueError, match=r"sampler must be one of \('ddim',\)"):
        generate(cascade, "a red circle", sampler="ddpm", **FEW)


@pytest.mark.parametrize("sampler", diffusion.SAMPLERS)
def test_every_sampler_minimagen_offers_runs_through_every_stage(cascade, sampler):
    images = generate(cascade, "a red circle", sampler=sampler, **FEW)
    assert [tuple(im.shape) for im in images] == [(3, s, s) for s in SIZES]
    assert all(bool(torch.isfinite(im).all()) for im in images)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(sampler="euler-ish"), "sampler must be one of"),
    (dict(thresholding="clip"), r"thresholding must be one of \('none', 'static', 'dynamic'\)"),
    (dict(thresholding=["dynamic", "clip", "static"]), "thresholding must be one of"),
])
def test_bad_choices_are_errors_that_name_the_allowed_values(cascade, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        generate(cascade, "a red circle", **kwargs)


@pytest.mark.parametrize("prompt", ["", "   ", None, ["a red circle"]])
def test_prompt_must_be_one_non_empty_caption(cascade, prompt):
    with pytest.raises(ValueError, match="prompt must be a non-empty caption"):
        generate(cascade, prompt)


def test_seed_must_be_an_int(cascade):
    with pytest.raises(TypeError, match="seed must be an int"):
        generate(cascade, "a red circle", seed=1.5)


def test_make_figure_draws_one_titled_panel_per_stage_with_the_settings_in_the_title():
    images = [torch.rand(3, s, s) for s in SIZES]
    settings = dict(guidance_scale=5.0, thresholding="dynamic", dynamic_thresholding_ratio=0.95, sampler="ddim",
                    num_inference_steps=25, noise_level=100, seed=0)
    fig = make_figure(images, "a red circle", settings)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["stage 0: 8x8", "stage 1: 16x16", "stage 2: 32x32"]
        assert fig._suptitle.get_text() == "'a red circle'\n" + describe_settings(settings)
    finally:
        plt.close(fig)


def test_describe_settings_names_each_setting_once():
    text = describe_settings(dict(guidance_scale=[5.0, 1.0], thresholding="dynamic", dynamic_thresholding_ratio=0.9,
                                  sampler="ddim", num_inference_steps=10, noise_level=250, seed=3))
    assert text == "w 5/1, dynamic p 0.9, ddim 10 steps, noise level 250, seed 3"


def test_make_figure_rejects_a_batch_instead_of_one_image_per_stage():
    with pytest.raises(ValueError, match=r"images\[0\] must be one \(3, s, s\) image"):
        make_figure([torch.rand(2, 3, 8, 8)])
