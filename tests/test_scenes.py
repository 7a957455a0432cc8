"""The scenes domain: deterministic, captions describe their specs completely, held-out wording and pairs
stay out of training, pictures have mid-tone statistics, render consistently at any size, and plug into
prepare_training_data."""
import re

import numpy as np
import pytest
import torch

from minimagen.data.scenes import (HELD_OUT, HELDOUT_TEMPLATE_MARKERS, LAYOUT, NOUN_ORDERS, TEMPLATES, VOCABULARY,
                                   WORDS, ObjectSpec, SceneSpec, ScenesDataset, caption_for, collate, fixed_prompts,
                                   misspell, preview_grid, random_scene, render_scene)
from minimagen.data.scenes_render import (COLORS, MATERIALS, POSITIONS, SHAPES, SIZES, background_image,
                                          object_layers, pixel_statistics)
from minimagen.data.shapes import ShapesDataset

ATTRIBUTES = ("shape", "color", "size", "material")


def contains(caption: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", caption) is not None


def pairs(spec):
    return {(o.color, o.shape) for o in spec.objects}


def test_same_seed_gives_identical_items_and_another_seed_different_ones():
    a, b, c = (ScenesDataset(size=12, seed=s, max_objects=3) for s in (3, 3, 4))
    for i in (0, 5, 11):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
        assert a[i]["spec"] == b[i]["spec"]
    assert [a[i]["caption"] for i in range(12)] != [c[i]["caption"] for i in range(12)]


def test_item_does_not_depend_on_access_order():
    late = ScenesDataset(size=6, seed=5)[5]
    fresh = ScenesDataset(size=6, seed=5)
    _ = [fresh[i] for i in range(5)]
    assert fresh[5]["caption"] == late["caption"] and torch.equal(fresh[5]["image"], late["image"])


def test_canonical_captions_read_as_written_by_hand():
    red = ObjectSpec("sphere", "red", "small", "shiny", "left")
    blue = ObjectSpec("cube", "blue", "large", "matte", "right")
    assert caption_for(SceneSpec((red,))) == "a small shiny red sphere on the left"
    assert caption_for(SceneSpec((red, blue), "left of")) == \
        "a small shiny red sphere to the left of a large matte blue cube"
    three = SceneSpec((red, ObjectSpec("cone", "orange", "small", "matte", "center"), blue), "left of")
    assert caption_for(three) == \
        "from left to right: a small shiny red sphere, a small matte orange cone and a large matte blue cube"


def test_every_caption_names_every_attribute_through_some_synonym():
    rng = np.random.default_rng(0)
    for _ in range(1500):
        spec = random_scene(rng, "all", max_objects=3)
        for wording in ("train", "heldout"):
            caption = caption_for(spec, rng, wording)
            for obj in spec.objects:
                for attribute in ATTRIBUTES:
                    words = WORDS[getattr(obj, attribute)][wording == "heldout"]
                    assert any(contains(caption, w) for w in words), (caption, obj, attribute)
            if len(spec.objects) == 1:  # a lone object's slot is named; several objects' order is
                assert any(contains(caption, w) for w in WORDS[spec.objects[0].position][wording == "heldout"])
            else:
                said = [w for key in ("left of", "right of", "left", "center", "right")
                        for w in WORDS[key][wording == "heldout"] if contains(caption, w)]
                assert said or "from left to right" in caption, caption


def test_held_out_words_and_templates_never_appear_in_training_captions():
    ds = ScenesDataset(size=3000, seed=0, split="train", max_objects=3)
    captions = [ds.spec_and_caption(i)[1] for i in range(len(ds))]
    held_words = [w for train, held in WORDS.values() for w in held]
    for caption in captions:
        assert not any(contains(caption, w) for w in held_words), caption
        assert not any(m in caption for m in HELDOUT_TEMPLATE_MARKERS), caption
    # the markers are exactly what separates the wordings: in every held-out template, in no training one
    for (n, wording), templates in TEMPLATES.items():
        for t in templates:
            assert any(m in t for m in HELDOUT_TEMPLATE_MARKERS) == (wording == "heldout"), t
    assert not any(m in t for t in NOUN_ORDERS["train"] for m in HELDOUT_TEMPLATE_MARKERS)
    # and training captions do use the variety: every training synonym shows up
    train_words = {w for train, held in WORDS.values() for w in train}
    assert {w for w in train_words if any(contains(c, w) for c in captions)} == train_words


def test_paraphrase_prompts_use_only_held_out_attribute_words():
    prompts = fixed_prompts("paraphrase", 40, seed=0)
    for caption, spec in prompts:
        for obj in spec.objects:
            for attribute in ATTRIBUTES:
                train, held = WORDS[getattr(obj, attribute)]
                assert any(contains(caption, w) for w in held) and not any(contains(caption, w) for w in train)
        assert any(m in caption for m in HELDOUT_TEMPLATE_MARKERS), caption   # a held-out template
    assert {len(s.objects) for _, s in prompts} == {1, 2}


def test_misspelled_prompts_change_one_attribute_word_per_object_by_one_letter():
    for caption, spec in fixed_prompts("misspelled", 30, seed=1):
        canonical = caption_for(spec).split()
        typed = caption.split()
        assert len(typed) == len(canonical)
        changed = [(a, b) for a, b in zip(canonical, typed) if a != b]
        assert len(changed) == len(spec.objects), (caption, canonical)
        for right, wrong in changed:
            assert wrong not in VOCABULARY
            swapped = len(wrong) == len(right) and sorted(wrong) == sorted(right)
            dropped = any(right[:i] + right[i + 1:] == wrong for i in range(len(right)))
            assert swapped or dropped, (right, wrong)
    assert misspell("sphere", 0) != "sphere" and misspell("conical object", 0).endswith(" object")


def test_heldout_pairs_never_in_train_split_and_in_every_heldout_scene():
    rng = np.random.default_rng(0)
    train = [random_scene(rng, "train", 3) for _ in range(2000)]
    assert not any(pairs(s) & HELD_OUT for s in train)
    heldout = [random_scene(rng, "heldout", 3) for _ in range(300)]
    assert all(pairs(s) & HELD_OUT for s in heldout)
    assert set().union(*(pairs(s) for s in heldout)) >= HELD_OUT
    seen = set().union(*(pairs(s) for s in train))              # each held-out word is seen in training
    assert all(any(c == color for c, _ in seen) and any(s == shape for _, s in seen) for color, shape in HELD_OUT)
    assert all(len({o.color for o in s.objects}) == len(s.objects) for s in train)   # colours differ


def test_fixed_prompts_are_deterministic_and_of_their_kind():
    assert fixed_prompts("two", 8, seed=0) == fixed_prompts("two", 8, seed=0)
    for _, spec in fixed_prompts("single_heldout", 12):
        assert len(spec.objects) == 1 and pairs(spec) <= HELD_OUT
    for caption, spec in fixed_prompts("two", 12):
        assert len(spec.objects) == 2 and spec.objects[0].shape != spec.objects[1].shape
        assert not pairs(spec) & HELD_OUT and caption == caption_for(spec)
    assert all(len(s.objects) == 3 for _, s in fixed_prompts("three", 6))
    assert all(pairs(s) & HELD_OUT for _, s in fixed_prompts("two_heldout", 6))


def test_captions_stay_short():
    # measured with the all-MiniLM-L6-v2 tokenizer: training captions <= 31 tokens with [CLS]/[SEP] (3 objects),
    # paraphrases <= 30; a word-count bound keeps that true without loading the tokenizer here
    rng = np.random.default_rng(2)
    lengths = [len(caption_for(random_scene(rng, "train", 3), rng).split()) for _ in range(2000)]
    assert max(lengths) <= 26
    assert max(len(c.split()) for kind in ("paraphrase", "misspelled", "two") for c, _ in fixed_prompts(kind, 40)) <= 26


def test_pixel_values_are_mid_tones_unlike_the_shapes():
    scenes = torch.stack([ScenesDataset(size=150, seed=0, max_objects=3)[i]["image"] for i in range(150)])
    shapes = torch.stack([ShapesDataset(size=150, seed=0)[i]["image"] for i in range(150)])
    ours, theirs = pixel_statistics(scenes), pixel_statistics(shapes)
    assert ours["fraction_at_0_or_1"] < 0.05 and theirs["fraction_at_0_or_1"] > 0.9
    assert 0.35 < ours["mean"] < 0.6 and ours["std"] > 0.12
    assert 0.02 < ours["p01"] and ours["p99"] < 0.98                 # values well inside (0, 1)


def test_pixel_statistics_counts_values_at_the_ends_after_quantisation():
    image = torch.tensor([0.0, 0.001, 0.5, 0.999, 1.0, 0.25]).view(1, 1, 2, 3)   # 0.001 -> 0, 0.999 -> 255
    stats = pixel_statistics(image)
    assert stats["fraction_at_0_or_1"] == pytest.approx(4 / 6)
    assert stats["mean"] == pytest.approx((0 + 0 + 128 + 255 + 255 + 64) / 6 / 255)


def test_a_128px_render_box_filtered_to_32px_matches_the_32px_render():
    rng = np.random.default_rng(4)
    for _ in range(6):
        spec = random_scene(rng, "all", 3)
        down = torch.nn.functional.avg_pool2d(render_scene(spec, 128)[None], 4)[0]   # [3, 32, 32]
        diff = (down - render_scene(spec, 32)).abs()
        # both box-filter the same picture (64 vs 16 rays per 32 px pixel): only edge pixels differ
        assert diff.mean() < 0.005 and diff.max() < 0.15


def test_object_layers_add_up_to_the_render_of_a_lone_object():
    spec = SceneSpec((ObjectSpec("cylinder", "purple", "large", "shiny", "center"),))
    lay = object_layers("cylinder", "large", "shiny", "center", 24)
    image = np.asarray(COLORS["purple"]) * lay["albedo_weight"][..., None] + lay["highlight"] + lay["rest"]
    assert np.allclose(image, render_scene(spec, 24).permute(1, 2, 0).numpy(), atol=1e-6)
    assert np.allclose(lay["rest"], background_image(24) * (lay["shadow"] * (1 - lay["coverage"]))[..., None])


def test_shiny_objects_have_a_highlight_and_matte_ones_none():
    for shape in SHAPES:
        shiny = object_layers(shape, "large", "shiny", "left", 32)["highlight"].max()
        matte = object_layers(shape, "large", "matte", "left", 32)["highlight"].max()
        assert matte == 0.0 and shiny > 0.3, shape


def test_dataset_prerender_image_sizes_and_collate():
    lazy = ScenesDataset(size=6, seed=4, image_sizes=(16, 32))
    eager = ScenesDataset(size=6, seed=4, image_sizes=(16, 32), prerender=True)
    assert torch.equal(lazy[3]["images"][16], eager[3]["images"][16])
    assert torch.equal(lazy[3]["image"], lazy[3]["images"][32])
    batch = collate([eager[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["images"][16].shape == (4, 3, 16, 16)
    assert isinstance(batch["spec"][0], SceneSpec) and len(batch["caption"]) == 4


def test_vocabulary_meets_the_brief():
    assert len(SHAPES) == 4 and len(COLORS) == 6 and SIZES == ("small", "large") and MATERIALS == ("matte", "shiny")
    assert POSITIONS == ("left", "center", "right") and set(LAYOUT[3]["left of"]) == set(POSITIONS)
    assert all(0.15 < min(rgb) and max(rgb) < 0.9 for rgb in COLORS.values())   # mid-tones, no pure hues


def test_bad_arguments_raise_value_errors_that_name_them():
    with pytest.raises(ValueError, match="shape"):
        ObjectSpec("pyramid", "red", "small", "matte", "left")
    with pytest.raises(ValueError, match="material"):
        ObjectSpec("cube", "red", "small", "wooden", "left")
    with pytest.raises(ValueError, match="position"):
        ObjectSpec("cube", "red", "small", "matte", "top")
    a, b = ObjectSpec("cube", "red", "small", "matte", "left"), ObjectSpec("cone", "red", "small", "matte", "right")
    with pytest.raises(ValueError, match="colour"):
        SceneSpec((a, b), "left of")
    with pytest.raises(ValueError, match="relation"):
        SceneSpec((a,), "left of")
    with pytest.raises(ValueError, match="positions"):
        SceneSpec((a, ObjectSpec("cone", "blue", "small", "matte", "center")), "left of")
    with pytest.raises(ValueError, match="max_objects"):
        random_scene(0, max_objects=4)
    with pytest.raises(ValueError, match="split"):
        ScenesDataset(size=2, split="test")
    with pytest.raises(ValueError, match="size"):
        ScenesDataset(size=0)
    with pytest.raises(ValueError, match="kind"):
        fixed_prompts("counting")
    with pytest.raises(ValueError, match="wording"):
        caption_for(SceneSpec((a,)), wording="rare")
    with pytest.raises(ValueError, match="image_size"):
        render_scene(SceneSpec((a,)), 4)
    with pytest.raises(ValueError, match="supersample"):
        render_scene(SceneSpec((a,)), 16, supersample=0)
    with pytest.raises(ValueError, match="empty"):
        pixel_statistics([])


def test_prepare_training_data_renders_the_scenes_domain(tmp_path):
    import dataclasses

    from minimagen.data.prepare import prepare_training_data
    from minimagen.tools.run_presets import RUN_PRESETS
    preset = dataclasses.replace(RUN_PRESETS["ci"], num_items=6, sizes=(16, 32), text_encoder="tiny-t5",
                                 max_length=128)
    data = prepare_training_data(preset, cache_dir=tmp_path / "cache", progress=False, domain="scenes")
    ds = ScenesDataset(size=6, image_sizes=(16, 32), seed=0, split="train", max_objects=preset.max_objects)
    expected = (ds[4]["images"][32].clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(data.images[1][4], expected) and data.images[0].shape == (6, 3, 16, 16)
    assert data.text.captions[data.caption_index[4]] == ds[4]["caption"]
    with pytest.raises(ValueError, match="not both"):
        prepare_training_data(preset, data_dir=tmp_path, domain="scenes")
    with pytest.raises(ValueError, match="domain"):
        prepare_training_data(preset, cache_dir=tmp_path / "cache", progress=False, domain="photos")


def test_preview_grid_writes_a_png(tmp_path):
    path = preview_grid(tmp_path / "preview.png", n=2, sizes=(16, 32), max_objects=3, dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
