"""The captioned-shapes dataset: deterministic, captions match specs, held-out pairs stay out of
training, rendering is anti-aliased, fits the frame and is cheap."""
import math
import time

import numpy as np
import pytest
import torch

from minimagen.data.shapes import (COLORS, HELD_OUT, NUM_TEMPLATES, POSITIONS, RELATION_LAYOUT,
                                   RELATIONS, SHAPES, SIZE_FRACTION, SIZES, SceneSpec, ShapeSpec,
                                   ShapesDataset, caption_for, collate, fixed_prompts, random_scene,
                                   render_scene, shape_coverage)


def pairs(spec):
    return {(o.color, o.shape) for o in spec.objects}


def test_same_seed_gives_identical_images_and_captions():
    a, b = ShapesDataset(size=20, seed=3), ShapesDataset(size=20, seed=3)
    for i in (0, 7, 19):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert a[i]["caption"] == b[i]["caption"] and a[i]["spec"] == b[i]["spec"]


def test_different_seed_gives_different_items():
    a, b = ShapesDataset(size=20, seed=0), ShapesDataset(size=20, seed=1)
    assert [a[i]["caption"] for i in range(20)] != [b[i]["caption"] for i in range(20)]
    assert not torch.equal(torch.stack([a[i]["image"] for i in range(20)]),
                           torch.stack([b[i]["image"] for i in range(20)]))


def test_item_does_not_depend_on_access_order():
    ds = ShapesDataset(size=10, seed=5)
    late = ds[9]
    fresh = ShapesDataset(size=10, seed=5)
    _ = [fresh[i] for i in range(9)]
    assert fresh[9]["caption"] == late["caption"] and torch.equal(fresh[9]["image"], late["image"])


def test_caption_names_every_attribute_of_the_spec():
    ds = ShapesDataset(size=300, seed=0, split="all")
    for i in range(len(ds)):
        spec, caption = ds.spec_and_caption(i)
        for obj in spec.objects:
            assert f"{obj.size} {obj.color} {obj.shape}" in caption, (caption, spec)
        if len(spec.objects) == 1:
            assert spec.objects[0].position in caption, (caption, spec)
        else:
            assert any(r in caption for r in RELATIONS), (caption, spec)


def test_caption_templates_word_a_two_object_scene_as_written_by_hand():
    spec = SceneSpec((ShapeSpec("square", "blue", "large", "left"),
                      ShapeSpec("triangle", "yellow", "small", "right")), "left of")
    assert [caption_for(spec, t) for t in range(NUM_TEMPLATES)] == [
        "a large blue square to the left of a small yellow triangle",
        "large blue square left of small yellow triangle",
        "a small yellow triangle to the right of a large blue square",
        "a picture of a large blue square to the left of a small yellow triangle",
    ]
    one = SceneSpec((ShapeSpec("circle", "red", "small", "top left"),))
    assert caption_for(one, 0) == "a small red circle in the top left"
    assert caption_for(one, 1) == "top left: small red circle"


def test_heldout_pairs_never_in_train_split_and_always_in_heldout_split():
    rng = np.random.default_rng(0)
    train = [random_scene(rng, "train") for _ in range(3000)]
    assert not any(pairs(s) & HELD_OUT for s in train)
    heldout = [random_scene(rng, "heldout") for _ in range(400)]
    assert all(pairs(s) & HELD_OUT for s in heldout)
    assert set().union(*(pairs(s) for s in heldout)) >= HELD_OUT       # every held-out pair occurs
    # the held-out words are not new: each colour and shape of a held-out pair is seen in training
    seen = set().union(*(pairs(s) for s in train))
    for color, shape in HELD_OUT:
        assert any(c == color for c, _ in seen) and any(s == shape for _, s in seen)


def test_dataset_train_split_excludes_heldout_pairs():
    ds = ShapesDataset(size=500, seed=1, split="train")
    assert not any(pairs(ds.spec_and_caption(i)[0]) & HELD_OUT for i in range(len(ds)))


def test_vocabulary_sizes_meet_the_brief():
    assert len(SHAPES) >= 4 and len(COLORS) >= 6 and len(SIZES) == 2 and len(POSITIONS) == 9
    assert set(RELATIONS) == {"left of", "right of", "above", "below"}


def test_rendered_image_is_float32_in_unit_range_with_requested_size():
    spec = random_scene(np.random.default_rng(1), "all")
    for size in (16, 24, 33):
        image = render_scene(spec, size)
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0


def test_antialiased_coverage_sums_to_the_shape_area():
    side = 40.0                                       # box side in pixels, centred off the pixel grid
    expected = {"circle": math.pi / 4 * side**2, "square": side**2, "triangle": side**2 / 2}
    for shape, area in expected.items():
        cover = shape_coverage(shape, (31.3, 30.7), side, 64, 64, supersample=8)
        assert cover.sum() == pytest.approx(area, rel=0.01), shape
    edge = shape_coverage("square", (32.0, 32.5), 20.0, 64, 64)       # top edge halfway down row 22
    assert edge[22, 32] == pytest.approx(0.5) and edge[30, 32] == 1.0 and edge[21, 32] == 0.0


def test_large_object_in_a_corner_fits_inside_the_image():
    # 50 px: large box side 0.44 * 50 = 22 px centred at 0.22 * 50 = 11 px, so it spans [0, 22]
    for position in ("top left", "bottom right"):
        spec = SceneSpec((ShapeSpec("square", "red", "large", position),))
        coverage = 1.0 - render_scene(spec, 50)[1]                       # green channel: 1 - coverage
        assert coverage.sum().item() == pytest.approx(22 * 22)
    assert SIZE_FRACTION["large"] / 2 <= 0.22                        # holds for every image size


def test_two_objects_do_not_overlap():
    for relation, (pos_a, pos_b) in RELATION_LAYOUT.items():
        spec = SceneSpec((ShapeSpec("square", "yellow", "large", pos_a),
                          ShapeSpec("square", "cyan", "large", pos_b)), relation)
        image = render_scene(spec, 32)
        yellow, cyan = image[2] < 1, image[0] < 1   # yellow (1,1,0) lowers only blue, cyan (0,1,1) only red
        assert yellow.any() and cyan.any() and not (yellow & cyan).any()


def test_image_sizes_give_the_same_scene_at_every_resolution():
    ds = ShapesDataset(size=4, seed=2, image_size=32, image_sizes=(16, 32, 64))
    item = ds[1]
    assert set(item["images"]) == {16, 32, 64} and torch.equal(item["images"][32], item["image"])
    down = torch.nn.functional.avg_pool2d(item["images"][64][None], 4)[0]   # [3, 16, 16]
    # both are box-filtered coverage; supersampling locates an edge to 1/4 pixel at 16 px
    assert (down - item["images"][16]).abs().max() <= 0.25


def test_prerender_matches_on_the_fly_and_collate_batches():
    lazy = ShapesDataset(size=12, seed=4, image_sizes=(16,))
    eager = ShapesDataset(size=12, seed=4, image_sizes=(16,), prerender=True)
    assert torch.equal(lazy[5]["image"], eager[5]["image"])
    assert torch.equal(lazy[5]["images"][16], eager[5]["images"][16])
    loader = torch.utils.data.DataLoader(eager, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["images"][16].shape == (4, 3, 16, 16)
    assert len(batch["caption"]) == 4 and isinstance(batch["spec"][0], SceneSpec)


def test_random_scene_accepts_a_torch_generator_deterministically():
    a = [random_scene(torch.Generator().manual_seed(9)) for _ in range(3)]
    b = [random_scene(torch.Generator().manual_seed(9)) for _ in range(3)]
    assert a == b


def test_fixed_prompts_are_deterministic_and_of_the_requested_kind():
    assert fixed_prompts("single_heldout", 8, seed=0) == fixed_prompts("single_heldout", 8, seed=0)
    for caption, spec in fixed_prompts("single_heldout", 20):
        assert len(spec.objects) == 1 and pairs(spec) <= HELD_OUT and caption == caption_for(spec, 0)
    for _, spec in fixed_prompts("single", 20):
        assert len(spec.objects) == 1 and not pairs(spec) & HELD_OUT
    for _, spec in fixed_prompts("two", 20):
        assert len(spec.objects) == 2 and not pairs(spec) & HELD_OUT


def test_invalid_specs_and_arguments_name_the_field():
    with pytest.raises(ValueError, match="shape"):
        ShapeSpec("star", "red", "small", "center")
    with pytest.raises(ValueError, match="position"):
        ShapeSpec("circle", "red", "small", "middle")
    a, b = ShapeSpec("circle", "red", "small", "left"), ShapeSpec("circle", "red", "small", "right")
    with pytest.raises(ValueError, match="colours"):
        SceneSpec((a, b), "left of")
    with pytest.raises(ValueError, match="relation"):
        SceneSpec((a, ShapeSpec("circle", "blue", "small", "right")), "above")
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(size=4, split="test")


def test_an_epoch_of_2000_images_at_32px_renders_in_seconds():
    ds = ShapesDataset(size=2000, image_size=32, seed=0)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    assert time.perf_counter() - start < 20.0   # about 1 s on a quiet 2-core machine; 20 s leaves slack
