"""The scenes scorer reads real renders back exactly at every resolution, tolerates mild noise, blur, moves
and lighting changes, and is not fooled by blanks, noise, wrong attributes or swapped objects."""
import dataclasses
import math
import re

import numpy as np
import pytest
import torch

from minimagen.data.scenes import ObjectSpec, SceneSpec, random_scene, render_scene
from minimagen.data.scenes_render import COLORS
from minimagen.data.scenes_scoring import detect_objects, match_scene, score_alignment
from minimagen.tools.scenes_check import gaussian_blur

N_CLEAN = 200


def random_specs(n, seed):
    rng = np.random.default_rng(seed)
    return [random_scene(rng, "all", max_objects=3) for _ in range(n)]  # a third each of 1, 2, 3 objects


@pytest.mark.parametrize("size", (16, 32, 64, 128))
def test_all_correct_at_least_97_percent_on_real_renders(size):
    specs = random_specs(N_CLEAN, seed=size)
    result = score_alignment([render_scene(s, size) for s in specs], specs)
    assert result["n_objects"] > 300 and result["n_relations"] > 100
    assert result["all_correct"] >= 0.97, result


@pytest.mark.parametrize("size, floor", [(16, 0.85), (32, 0.95), (128, 0.95)])
def test_mild_noise_and_blur_keep_most_images_all_correct(size, floor):
    # noise sigma 0.05, blur sigma 0.5 px at 32 px (the same in scene units at every size); at 16 px a small
    # object is 3 px wide and its highlight about one pixel, so noise costs some material readings there
    specs = random_specs(60, seed=100 + size)
    g = torch.Generator().manual_seed(size)
    images = [render_scene(s, size) for s in specs]
    noisy = [(i + 0.05 * torch.randn(i.shape, generator=g)).clamp(0, 1) for i in images]
    blurred = [gaussian_blur(i, 0.5 * size / 32) for i in images]
    for name, batch in (("noise", noisy), ("blur", blurred)):
        result = score_alignment(batch, specs)
        assert result["all_correct"] >= floor, (name, result)
        assert min(result[a] for a in ("color", "shape", "size", "position", "count")) >= 0.97, (name, result)


def test_darker_tinted_or_slightly_moved_renders_still_read_correctly():
    specs = random_specs(30, seed=7)
    images = [render_scene(s, 32) for s in specs]
    tint = torch.tensor([1.05, 1.0, 0.92])[:, None, None]
    for name, batch in (("darker", [0.85 * i for i in images]), ("tinted", [(i * tint).clamp(0, 1) for i in images]),
                        ("moved 1 px", [torch.roll(i, 1, dims=2) for i in images])):
        assert score_alignment(batch, specs)["all_correct"] >= 0.9, name


def test_blank_and_noise_images_score_zero():
    specs = random_specs(40, seed=1)
    g = torch.Generator().manual_seed(0)
    blank = torch.full((40, 3, 32, 32), 0.5)
    noise = (0.5 + 0.3 * torch.randn(40, 3, 32, 32, generator=g)).clamp(0, 1)
    assert score_alignment(blank, specs)["all_correct"] == 0.0 and sum(len(detect_objects(b)) for b in blank) == 0
    assert score_alignment(noise, specs)["all_correct"] <= 0.02
    assert score_alignment(noise[:10, :, :16, :16], specs[:10])["all_correct"] <= 0.1


def test_images_scored_against_other_images_specs_are_near_chance():
    specs = random_specs(60, seed=3)
    images = [render_scene(s, 32) for s in specs]
    # chance of one object agreeing on all: 1/6 colours * 1/4 shapes * 1/2 sizes * 1/2 materials (* count)
    assert score_alignment(images, specs[1:] + specs[:1])["all_correct"] <= 0.05


def test_a_clean_render_gives_back_the_exact_albedo():
    spec = SceneSpec((ObjectSpec("sphere", "orange", "large", "shiny", "left"),
                      ObjectSpec("cone", "blue", "small", "matte", "right")), "left of")
    found = detect_objects(render_scene(spec, 32))
    assert [f["position"] for f in found] == ["left", "right"]
    for f, obj in zip(found, spec.objects):
        assert f["albedo"] == pytest.approx(COLORS[obj.color], abs=1e-4) and f["residual"] < 1e-6
        assert (f["color"], f["shape"], f["size"], f["material"]) == (obj.color, obj.shape, obj.size, obj.material)


def test_each_wrong_attribute_is_reported_as_that_attribute_only():
    asked = ObjectSpec("cylinder", "green", "large", "shiny", "center")
    for attribute, value in (("color", "purple"), ("shape", "cube"), ("size", "small"), ("material", "matte"),
                             ("position", "right")):
        drawn = SceneSpec((dataclasses.replace(asked, **{attribute: value}),))
        result = score_alignment(render_scene(drawn, 32)[None], [SceneSpec((asked,))])
        assert result[attribute] == 0.0 and result["all_correct"] == 0.0, attribute
        others = [a for a in ("color", "shape", "size", "material", "position") if a != attribute]
        assert all(result[a] == 1.0 for a in others), (attribute, result)


def test_swapped_objects_break_the_relation_and_positions():
    red = ObjectSpec("sphere", "red", "small", "shiny", "left")
    blue = ObjectSpec("cube", "blue", "large", "matte", "right")
    asked = SceneSpec((red, blue), "left of")
    drawn = SceneSpec((dataclasses.replace(red, position="right"),
                       dataclasses.replace(blue, position="left")), "right of")
    assert score_alignment(render_scene(asked, 32)[None], [asked])["relation"] == 1.0
    result = score_alignment(render_scene(drawn, 32)[None], [asked])
    assert result["relation"] == 0.0 and result["position"] == 0.0 and result["all_correct"] == 0.0
    assert result["color"] == result["shape"] == result["size"] == result["material"] == 1.0


def test_missing_and_extra_objects_fail_the_count():
    three = random_scene(0, "all", num_objects=3)
    two = SceneSpec(three.objects[::2], three.relation)             # left and right, same relation
    over = match_scene(detect_objects(render_scene(three, 32)), two)
    assert all(all(j.values()) for j in over["objects"]) and not over["count"] and not over["all_correct"]
    under = match_scene(detect_objects(render_scene(two, 32)), three)
    assert under["matches"][1] is None and not under["count"] and not under["all_correct"]


def test_bad_inputs_raise_value_errors_that_say_what_to_pass():
    spec = random_specs(1, seed=0)[0]
    with pytest.raises(ValueError, match=re.escape("[3, H, H]")):
        detect_objects(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match=re.escape("(x + 1) / 2")):
        detect_objects(torch.full((3, 32, 32), -1.0))
    with pytest.raises(ValueError, match="one spec per image"):
        score_alignment(torch.zeros(2, 3, 32, 32), [spec])
    with pytest.raises(ValueError, match="empty"):
        score_alignment([], [])
    assert math.isnan(score_alignment(render_scene(SceneSpec(spec.objects[:1]), 32)[None],
                                      [SceneSpec(spec.objects[:1])])["relation"])
