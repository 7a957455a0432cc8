"""The caption-alignment scorer reads real dataset images back correctly, survives the imperfections of
generated images, and is not fooled by blanks, noise, moved objects or wrong colours."""
import math

import numpy as np
import pytest
import torch

from minimagen.data.shapes import (COLORS, POSITIONS, RELATION_LAYOUT, SIZE_FRACTION, SceneSpec,
                                   ShapeSpec, random_scene, render_scene)
from minimagen.data.shapes_scoring import connected_components, detect_objects, match_scene, score_alignment

RESOLUTIONS = (16, 24, 32, 48, 64, 128)
N_IMAGES = 200


def random_specs(n, seed):
    rng = np.random.default_rng(seed)
    return [random_scene(rng, split="all") for _ in range(n)]  # half one object, half two


def gaussian_blur(image, sigma):
    """Separable Gaussian blur of a [3, H, W] numpy array, kernel radius 3 sigma, edges replicated."""
    r = math.ceil(3 * sigma)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma**2))
    k = k / k.sum()                                                     # [2r + 1] taps
    h, w = image.shape[-2:]
    padded = np.pad(image, ((0, 0), (r, r), (r, r)), mode="edge")     # [3, H + 2r, W + 2r]
    rows = sum(k[j] * padded[:, j:j + h, :] for j in range(2 * r + 1))  # [3, H, W + 2r]
    return sum(k[j] * rows[:, :, j:j + w] for j in range(2 * r + 1))    # [3, H, W]


def imperfect(spec, size, rng):
    """Like a generated sample: grey-ish tinted background, 0.7 px blur, N(0, 0.1^2) noise, clipped."""
    grey = rng.uniform(0.5, 0.95)
    background = tuple(float(np.clip(grey + rng.uniform(-0.04, 0.04), 0, 1)) for _ in range(3))
    image = gaussian_blur(render_scene(spec, size, background=background).numpy(), 0.7)
    return torch.from_numpy(np.clip(image + rng.normal(0.0, 0.1, image.shape), 0, 1).astype(np.float32))


@pytest.mark.parametrize("size", RESOLUTIONS)
def test_all_correct_at_least_98_percent_on_real_images(size):
    specs = random_specs(N_IMAGES, seed=size)
    result = score_alignment([render_scene(s, size) for s in specs], specs)
    assert result["n"] == N_IMAGES and result["n_relations"] > 50
    assert result["all_correct"] >= 0.98, result


@pytest.mark.parametrize("size", RESOLUTIONS)
def test_all_correct_at_least_95_percent_with_noise_grey_background_and_blur(size):
    specs = random_specs(N_IMAGES, seed=1000 + size)
    rng = np.random.default_rng(size)
    result = score_alignment([imperfect(s, size, rng) for s in specs], specs)
    assert result["all_correct"] >= 0.95, result


def test_blank_image_has_no_detections_and_scores_zero():
    spec = SceneSpec((ShapeSpec("circle", "red", "large", "center"),))
    blank = torch.ones(3, 32, 32)
    assert detect_objects(blank) == []
    result = score_alignment(blank[None], [spec])
    assert result["all_correct"] == 0.0 and result["color"] == 0.0 and result["position"] == 0.0


def test_pure_noise_images_score_about_zero():
    generator = torch.Generator().manual_seed(0)
    specs = random_specs(50, seed=1)
    uniform = torch.rand(50, 3, 32, 32, generator=generator)             # every colour everywhere
    grey = (0.7 + 0.1 * torch.randn(50, 3, 32, 32, generator=generator)).clamp(0, 1)  # noisy blank
    assert score_alignment(uniform, specs)["all_correct"] <= 0.02
    assert score_alignment(grey, specs)["all_correct"] == 0.0
    assert sum(len(detect_objects(g)) for g in grey) == 0


def test_moving_the_object_moves_the_detected_position():
    for position in POSITIONS:
        spec = SceneSpec((ShapeSpec("square", "blue", "small", position),))
        (found,) = detect_objects(render_scene(spec, 32))
        assert found["position"] == position


def test_wrong_colour_is_reported_as_wrong_colour_only():
    asked = SceneSpec((ShapeSpec("triangle", "red", "large", "top right"),))
    drawn = SceneSpec((ShapeSpec("triangle", "green", "large", "top right"),))
    result = score_alignment(render_scene(drawn, 32)[None], [asked])
    assert result["color"] == 0.0 and result["all_correct"] == 0.0
    assert result["shape"] == result["size"] == result["position"] == 1.0


def test_wrong_shape_and_wrong_size_are_reported():
    asked = SceneSpec((ShapeSpec("circle", "yellow", "small", "left"),))
    drawn = SceneSpec((ShapeSpec("heart", "yellow", "large", "left"),))
    result = score_alignment(render_scene(drawn, 32)[None], [asked])
    assert result["shape"] == 0.0 and result["size"] == 0.0 and result["color"] == 1.0


def test_swapped_objects_break_the_relation():
    a = ShapeSpec("circle", "red", "large", RELATION_LAYOUT["left of"][0])
    b = ShapeSpec("square", "blue", "small", RELATION_LAYOUT["left of"][1])
    asked = SceneSpec((a, b), "left of")
    drawn = SceneSpec((ShapeSpec("circle", "red", "large", "right"),
                       ShapeSpec("square", "blue", "small", "left")), "right of")
    assert score_alignment(render_scene(asked, 32)[None], [asked])["relation"] == 1.0
    result = score_alignment(render_scene(drawn, 32)[None], [asked])
    assert result["relation"] == 0.0 and result["position"] == 0.0 and result["all_correct"] == 0.0
    assert result["color"] == result["shape"] == result["size"] == 1.0


def test_images_scored_against_other_images_specs_are_near_chance():
    specs = random_specs(100, seed=7)
    images = [render_scene(s, 32) for s in specs]
    shuffled = specs[1:] + specs[:1]
    # chance of matching every attribute of one object: 1/6 colours * 1/4 shapes * 1/2 sizes * 1/9 cells
    assert score_alignment(images, shuffled)["all_correct"] <= 0.05


def test_extra_objects_make_all_correct_false():
    two = SceneSpec((ShapeSpec("circle", "red", "large", "top"),
                     ShapeSpec("square", "cyan", "small", "bottom")), "above")
    one = SceneSpec(two.objects[:1])
    result = match_scene(detect_objects(render_scene(two, 32)), one)
    assert all(result["objects"][0].values()) and not result["count"] and not result["all_correct"]


def test_detected_area_centroid_and_side_of_a_pixel_aligned_square():
    # large square at top left, 50 px: box side 0.44 * 50 = 22 px from (0, 0) to (22, 22)
    spec = SceneSpec((ShapeSpec("square", "magenta", "large", "top left"),))
    (found,) = detect_objects(render_scene(spec, 50))
    assert found["area"] == pytest.approx(0.44**2, rel=1e-6)
    assert found["centroid"] == pytest.approx((0.22, 0.22), abs=1e-6)
    assert found["side"] == pytest.approx(SIZE_FRACTION["large"], rel=1e-6)
    assert (found["color"], found["shape"], found["size"]) == ("magenta", "square", "large")


def test_touching_objects_of_different_colours_are_two_detections():
    image = torch.ones(3, 24, 24)
    image[:, 6:18, 2:12] = torch.tensor(COLORS["red"])[:, None, None]     # two 12 x 10 blocks that share
    image[:, 6:18, 12:22] = torch.tensor(COLORS["blue"])[:, None, None]   # the edge at column 12
    found = detect_objects(image)
    assert sorted(f["color"] for f in found) == ["blue", "red"]
    assert [f["area"] for f in found] == pytest.approx([120 / 576, 120 / 576])


def test_connected_components_on_a_hand_drawn_map():
    classes = np.array([[1, 1, 0, 2],
                        [0, 1, 0, 2],
                        [3, 0, 0, 1],
                        [3, 3, 1, 1]])
    labels, n = connected_components(classes)
    assert n == 4                                    # {1,1,1}, {2,2}, {3,3,3}, {1,1,1} (diagonals don't join)
    assert len({labels[0, 0], labels[0, 1], labels[1, 1]}) == 1
    assert labels[0, 0] != labels[3, 3] and labels[2, 3] == labels[3, 2] == labels[3, 3]
    assert (labels == 0).sum() == 5


def test_relation_is_nan_without_two_object_specs_and_lengths_must_match():
    spec = SceneSpec((ShapeSpec("circle", "red", "large", "center"),))
    result = score_alignment(render_scene(spec, 32)[None], [spec])
    assert math.isnan(result["relation"]) and result["all_correct"] == 1.0
    with pytest.raises(ValueError, match="specs"):
        score_alignment(torch.ones(2, 3, 32, 32), [spec])
