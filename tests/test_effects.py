"""tools/effects: the measurement functions return their documented keys on a tiny untrained cascade, the
saturated fraction matches a hand count, each sweep varies only its one setting, bad arguments raise."""
import json

import pytest
import torch

from minimagen.cascade import Cascade, tiny_cascade_config
from minimagen.data.fidelity import FeatureExtractor, FeatureNet, FeatureNetConfig
from minimagen.tools import effects

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cascade = Cascade(tiny_cascade_config(sizes=(16, 32))).eval()
    extractor = FeatureExtractor(FeatureNet(FeatureNetConfig(num_classes=(2, 3))), "scenes")  # random features
    prompts = effects.effect_prompts(4)
    cascade.encode_text([c for c, _ in prompts])                   # load the text encoder once, here
    ref = effects.Reference.build([s for _, s in prompts], len(SEEDS), 16)
    return cascade, extractor, prompts, ref


def test_saturated_fraction_counts_values_at_0_or_1_by_hand():
    image = torch.full((1, 3, 2, 2), 0.5)          # 12 values
    image[0, 0, 0, 0] = 0.0
    image[0, 1, 1, 1] = 1.0
    image[0, 2, 0, 1] = 1.0 - 1e-9                 # within atol: counts
    image[0, 2, 1, 0] = 0.999                      # a mid-tone near 1: does not
    assert effects.saturated_fraction(image) == pytest.approx(3 / 12)
    with pytest.raises(ValueError, match="empty"):
        effects.saturated_fraction(torch.empty(0, 3, 2, 2))


def test_effect_prompts_are_half_single_half_two_objects():
    prompts = effects.effect_prompts(6)
    assert [len(s.objects) for _, s in prompts] == [1, 1, 1, 2, 2, 2]
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="n="):
            effects.effect_prompts(bad)


def test_reference_perfect_set_is_the_prompts_renders_once_per_seed(tiny):
    _, _, prompts, ref = tiny
    assert ref.fresh.shape == ref.fresh_b.shape == ref.perfect.shape == (8, 3, 16, 16)
    assert torch.equal(ref.perfect[:4], ref.perfect[4:])                     # seed 0 block == seed 1 block
    assert not torch.equal(ref.fresh, ref.fresh_b)


def test_guidance_sweep_returns_documented_keys_and_varies_only_w(tiny, monkeypatch):
    cascade, extractor, prompts, ref = tiny
    calls = []
    real = effects.sample_cascade
    monkeypatch.setattr(effects, "sample_cascade", lambda *a, **k: calls.append(k) or real(*a, **k))
    res = effects.guidance_sweep(cascade, prompts, extractor, ref, seeds=SEEDS, guidance_scales=(1, 4),
                                 num_inference_steps=1)
    assert res["guidance_scale"] == [1.0, 4.0] and len(res["rows"]) == 2
    row = res["rows"][0]
    for key in ("all_correct", "color", "shape", "relation", "saturated"):
        assert set(row[key]) == {"mean", "spread"} and 0 <= row[key]["mean"] <= 1
    assert row["fd"] >= 0 and row["diversity"] >= 0 and row["pixel_std"] >= 0
    assert len(calls) == 4                                                   # 2 weights x 2 seeds, one batch
    differing = {k for k in calls[0] if k not in ("generator", "text_embeds", "text_mask")
                 and calls[0][k] != calls[-1][k]}
    assert differing == {"guidance_scale"}


def test_thresholding_sweep_varies_only_the_thresholding_and_reuses_done_sweeps(tiny, monkeypatch):
    cascade, extractor, prompts, ref = tiny
    calls = []
    real = effects.sample_cascade
    monkeypatch.setattr(effects, "sample_cascade", lambda *a, **k: calls.append(k) or real(*a, **k))
    done = {"dynamic_0.95": "measured before"}
    res = effects.thresholding_sweep(cascade, prompts, extractor, ref, modes=("static", "dynamic_0.995",
                                     "dynamic_0.95"), done=done, seeds=SEEDS, guidance_scales=(8,),
                                     num_inference_steps=1)
    assert list(res) == ["static", "dynamic_0.995", "dynamic_0.95"] and res["dynamic_0.95"] == "measured before"
    assert [(c["thresholding"], c["dynamic_thresholding_ratio"]) for c in calls[::2]] == [("static", 0.95),
                                                                                          ("dynamic", 0.995)]
    assert {c["guidance_scale"] for c in calls} == {8.0}
    with pytest.raises(ValueError, match="subset"):
        effects.thresholding_sweep(cascade, prompts, extractor, ref, modes=("clip",))


def test_sr_comparison_and_noise_sweep_feed_every_arm_the_same_base_images(tiny, monkeypatch):
    cascade, extractor, prompts, _ = tiny
    ref32 = effects.Reference.build([s for _, s in prompts], 1, 32)
    base = torch.rand(1, 4, 3, 16, 16)
    seen = []
    real = effects.sample_cascade
    monkeypatch.setattr(effects, "sample_cascade", lambda *a, **k: seen.append(k) or real(*a, **k))
    res = effects.sr_comparison({"aug": cascade, "noaug": cascade}, base, prompts, extractor, ref32, seeds=(0,),
                                num_inference_steps=1)
    assert set(res) == {"aug", "noaug"} and res["aug"]["noise_level"] == cascade.config.stages[1].sample_noise_level
    assert all(torch.equal(k["lowres_images"], base[0]) for k in seen)
    assert res["aug"]["fd"] == pytest.approx(res["noaug"]["fd"])               # same cascade, same seeds
    seen.clear()
    sweep = effects.noise_level_sweep(cascade, base, prompts, extractor, ref32, seeds=(0,), noise_levels=(0, 300),
                                      guidance_scales=(1, 3), num_inference_steps=1)
    assert sweep["noise_level"] == [0, 300] and list(sweep["rows"]) == ["1.0", "3.0"]
    assert [(k["guidance_scale"], k["noise_level"]) for k in seen] == [(1.0, 0), (1.0, 300), (3.0, 0), (3.0, 300)]
    assert "diversity" not in sweep["rows"]["1.0"][0]                         # one seed: no diversity
    with pytest.raises(ValueError, match="lowres_images"):
        effects.sr_comparison({"aug": cascade}, torch.rand(2, 4, 3, 16, 16), prompts, extractor, ref32,
                              seeds=(0,), num_inference_steps=1)


def test_degraded_inputs_are_worse_copies_of_the_same_base_samples(tiny, monkeypatch):
    cascade, _, prompts, _ = tiny
    base = torch.full((2, 4, 3, 16, 16), 0.5)
    grain = effects.degrade_lowres(cascade, base, [c for c, _ in prompts], (0, 1), kind="grain", grain=0.05)
    assert grain.shape == base.shape and 0 <= grain.min() and grain.max() <= 1
    assert (grain - base).std().item() == pytest.approx(0.05, rel=0.1)        # the grain asked for
    again = effects.degrade_lowres(cascade, base, [c for c, _ in prompts], (0, 1), kind="grain", grain=0.05)
    assert torch.equal(grain, again)                                          # seeded
    seen = []
    real = effects.sample_cascade
    monkeypatch.setattr(effects, "sample_cascade", lambda *a, **k: seen.append(k) or real(*a, **k))
    few = effects.degrade_lowres(cascade, base, [c for c, _ in prompts], (0, 1), kind="fewer_steps", base_steps=2)
    assert few.shape == base.shape and {k["num_inference_steps"] for k in seen} == {2}
    with pytest.raises(ValueError, match="fewer_steps"):
        effects.degrade_lowres(cascade, base, [c for c, _ in prompts], (0,), kind="blur")


def test_bad_arguments_raise_value_error(tiny):
    cascade, extractor, prompts, ref = tiny
    with pytest.raises(ValueError, match="guidance_scales"):
        effects.guidance_sweep(cascade, prompts, extractor, ref, guidance_scales=())
    with pytest.raises(ValueError, match="num_seeds"):
        effects.run_effects(cascade, extractor, num_seeds=1)
    with pytest.raises(ValueError, match="super-resolution"):
        effects.sr_options(Cascade(tiny_cascade_config(sizes=(16,))), 100, 1.0, 2)
    with pytest.raises(ValueError, match=r"\[S, P"):
        effects.measure_samples(torch.rand(4, 3, 16, 16), [s for _, s in prompts], extractor, ref)


def test_run_effects_quick_writes_small_json(tiny, tmp_path, monkeypatch):
    cascade, extractor, _, _ = tiny
    monkeypatch.setattr(effects, "QUICK", dict(guidance_scales=(1.0, 3.0), noise_levels=(0,), sr_guidance=(1.0,),
                                               base_steps=1, sr_steps=1))
    out = tmp_path / "effects.json"
    res = effects.run_effects(cascade, extractor, noaug=cascade, sr_arms={"aug200": cascade}, num_prompts=2,
                              quick=True, out=out, parts=("guidance", "sr"), progress=False)
    saved = json.loads(out.read_text())
    assert set(saved) >= {"settings", "reference_base", "guidance", "sr_comparison", "sr_comparison_level0",
                          "sr_robustness", "noise_level_sweep"}
    assert set(saved["sr_comparison"]) == {"aug", "noaug", "aug200"} and set(saved["sr_comparison_level0"]) == {"aug"}
    assert set(saved["sr_robustness"]) == set(effects.DEGRADATIONS)
    assert all(set(r) == {"input", "aug", "noaug", "aug200"} for r in saved["sr_robustness"].values())
    assert saved["sr_arms"]["aug"]["train_noise_level_max"] == cascade.config.stages[1].train_noise_level_max
    assert saved["guidance"]["guidance_scale"] == list(effects.QUICK["guidance_scales"])
    assert res["reference_base"]["n"] == 4 and out.stat().st_size < 40_000
