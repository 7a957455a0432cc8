"""The findings runner (minimagen/tools/findings*.py): one change per arm, equal budgets and seeds, caching.

Training itself is replaced by a fake runner here (the real one runs in CI as `findings --quick`, .ci/run);
these tests check the bookkeeping that makes the comparisons fair.
"""
import dataclasses
import json

import pytest

from minimagen.text_encoder import encoder_fingerprint, load_text_encoder, text_embed_dim
from minimagen.tools import findings as F
from minimagen.tools.findings_arms import (ARMS, BUDGETS, FINDINGS, ArmSpec, arm_diff, arm_key, max_length_for,
                                           run_preset)
from minimagen.tools.run_presets import build_cascade_config

EXPECTED_CHANGE = {"random_minilm": "text_encoder", "tiny_t5": "text_encoder", "wide_unet": "base_channels",
                   "pooled_only": "text_attention", "epsilon": "prediction_type", "min_snr_5": "min_snr_gamma",
                   "sr_regular": "efficient"}


@pytest.mark.parametrize("finding", sorted(FINDINGS))
def test_every_arm_differs_from_its_baseline_in_exactly_one_field(finding):
    f = FINDINGS[finding]
    for arm in f.arms:
        diff = arm_diff(ARMS[arm], ARMS[f.baseline])
        assert list(diff) == [EXPECTED_CHANGE[arm]], (finding, arm, diff)


def _trained_unet(name):
    arm = ARMS[name]
    preset = run_preset(arm, BUDGETS["full"])
    return build_cascade_config(preset, text_embed_dim(arm.text_encoder)).stages[0 if arm.stage == "base" else 1].unet


def test_the_one_change_reaches_the_trained_unet_and_nothing_else():
    base = dataclasses.asdict(_trained_unet("pretrained"))
    changed = {a: {k for k, v in dataclasses.asdict(_trained_unet(a)).items() if base[k] != v}
               for a in ("wide_unet", "pooled_only", "random_minilm", "epsilon", "min_snr_5")}
    assert changed == {"wide_unet": {"base_channels"},                                  # 32 -> 64
                       "pooled_only": {"attn_resolutions", "cross_attn_resolutions"},   # (4,), (8, 4) -> ()
                       "random_minilm": set(), "epsilon": set(), "min_snr_5": set()}     # same network
    assert (_trained_unet("tiny_t5").text_embed_dim, base["text_embed_dim"]) == (64, 384)  # the encoder's width
    sr = {k for k, v in dataclasses.asdict(_trained_unet("sr_regular")).items()
          if dataclasses.asdict(_trained_unet("sr_efficient"))[k] != v}
    assert sr == {"efficient", "cross_attn_resolutions"}  # the same level (-1): 4 px efficient, 8 px regular


def test_presets_of_all_base_arms_share_budget_data_and_sampling():
    budget = BUDGETS["full"]
    presets = {a: run_preset(ARMS[a], budget) for a in ARMS if ARMS[a].stage == "base"}
    shared = ("steps", "batch_size", "num_items", "learning_rate", "warmup_steps", "num_inference_steps",
              "guidance_scale", "thresholding", "max_objects", "domain", "num_eval_prompts")
    for name, p in presets.items():
        for field in shared:
            assert getattr(p, field) == getattr(presets["pretrained"], field), (name, field)
    assert presets["pretrained"].steps == (160, 0) and presets["pretrained"].batch_size == 32
    assert budget.num_prompts >= 48 and len(budget.seeds) >= 3          # the issue's minimum for the full run
    assert max_length_for("tiny-t5") == 128 and presets["tiny_t5"].max_length == 128   # byte-level captions


def test_equal_minutes_gives_steps_in_inverse_proportion_to_step_time():
    budget = BUDGETS["full"]
    times = {"pretrained": 0.5, "wide_unet": 1.5, "sr_efficient": 0.2, "sr_regular": 0.6}
    timed = []

    def timer(arm, b, n):
        name = next(k for k, v in ARMS.items() if v == arm)
        timed.append(name)
        return times[name]
    steps = F.plan(["encoder_vs_unet", "efficient_unet", "conditioning"], budget, {}, timer)
    # 160 steps x 0.5 s = 80 s; the wide U-Net gets 80 s / 1.5 s = 53.3 -> 53 steps
    assert steps["encoder_vs_unet"] == {"pretrained": 160, "random_minilm": 160, "wide_unet": 53}
    assert steps["efficient_unet"] == {"sr_efficient": 160, "sr_regular": 53}   # 160 x 0.2 / 0.6
    assert steps["conditioning"] == {"pretrained": 160, "pooled_only": 160}     # equal steps: nothing timed
    assert "random_minilm" not in timed and "pooled_only" not in timed           # same U-Net: no timing needed


def _fake_runner(calls):
    def run(task):
        calls.append((task.name, task.seed, task.steps))
        score = 0.5 + 0.1 * task.seed + (0.05 if task.name == "pretrained" else 0.0)
        sets = F.BASE_SETS if task.arm.stage == "base" else F.SR_SETS
        by_set = {s: {"attributes": score, "all_correct": score / 2, **({"mse_to_real": 0.01}
                      if task.arm.stage == "sr" else {})} for s in sets}
        return {"arm": task.name, "spec": dataclasses.asdict(task.arm), "seed": task.seed, "steps": task.steps,
                "batch_size": 8, "by_set": by_set, "fidelity": None, "loss_first": 1.0, "loss_last": 0.5,
                "train_s": 1.0, "step_s": 0.1, "eval_s": 0.1, "data_s": 0.0, "params": 10}
    return run


@pytest.fixture
def offline_runner(monkeypatch):
    monkeypatch.setattr(F, "_data", lambda preset, task: None)            # no rendering / encoding
    monkeypatch.setattr(F, "reference_fidelity", lambda budget: {"available": False})
    monkeypatch.setattr(F, "training_memory", lambda steps, budget: {})
    monkeypatch.setattr("minimagen.tools.findings_plots.plot_findings", lambda summary, out: [])


def test_second_run_reuses_every_result_and_a_changed_arm_trains_again(tmp_path, offline_runner, monkeypatch):
    budget = dataclasses.replace(BUDGETS["quick"], seeds=(0, 1, 2))
    calls = []
    kwargs = dict(budget=budget, out=tmp_path / "out", cache=tmp_path / "cache", workers=1, progress=False,
                  runner=_fake_runner(calls), timer=lambda arm, b, n: 0.1)
    F.run_findings(["text_encoder", "conditioning"], **kwargs)
    assert len(calls) == 4 * 3                       # pretrained, random_minilm, tiny_t5, pooled_only x 3 seeds
    assert {seed for _, seed, _ in calls} == {0, 1, 2}
    assert len({steps for _, _, steps in calls}) == 1  # the same budget for every arm
    calls.clear()
    summary = F.run_findings(["text_encoder", "conditioning"], **kwargs)
    assert calls == [] and summary["run"]["cached"] == 12
    resummary = F.run_findings(["text_encoder", "beyond_paper"], **{**kwargs, "train": False})["run"]
    assert resummary["results"] == 9 and calls == []  # --no-train: epsilon and min_snr_5 are missing, not trained
    assert resummary["trained"] == 0 and resummary["training_run"]["trained"] == 12  # the training run's record kept
    monkeypatch.setitem(ARMS, "tiny_t5", dataclasses.replace(ARMS["tiny_t5"], min_snr_gamma=5.0))
    F.run_findings(["text_encoder", "conditioning"], **kwargs)
    assert sorted(calls) == [("tiny_t5", s, budget.base_steps) for s in (0, 1, 2)]   # only the changed arm


def test_summary_is_mean_and_std_over_seeds_and_paired_differences(tmp_path, offline_runner):
    budget = dataclasses.replace(BUDGETS["quick"], seeds=(0, 1, 2))
    summary = F.run_findings(["conditioning"], budget, tmp_path / "o", tmp_path / "c", workers=1, progress=False,
                             runner=_fake_runner([]))
    written = json.loads((tmp_path / "o" / "findings.json").read_text())
    entry = written["findings"]["conditioning"]
    base = entry["arms"]["pretrained"]["overall"]["attributes"]
    # seeds 0, 1, 2 score 0.55, 0.65, 0.75: mean 0.65, sample std 0.1
    assert base["mean"] == pytest.approx(0.65) and base["std"] == pytest.approx(0.1) and base["n"] == 3
    d = entry["vs_baseline"]["pooled_only"]["attributes"]
    assert d["per_seed"] == pytest.approx([-0.05] * 3) and d["verdict"] == "worse"   # std 0 < |mean|
    assert entry["arms"]["pooled_only"]["diff"] == {"text_attention": [True, False]}
    assert summary["findings"]["guidance_thresholding"]["rows"] is None               # no effects.json given


def test_paired_difference_within_noise_when_the_spread_is_large():
    def results(values):
        return [{"seed": i, "by_set": {"a": {"attributes": v}}} for i, v in enumerate(values)]
    d = F.paired_difference(results([0.6, 0.2, 0.7]), results([0.5, 0.5, 0.5]))
    # differences 0.1, -0.3, 0.2: mean 0, std 0.265 -> within noise
    assert d["mean"] == pytest.approx(0.0) and d["verdict"] == "within noise"


def test_cache_key_changes_with_arm_seed_and_steps_only_when_they_change():
    budget = BUDGETS["full"]
    k = arm_key(ARMS["pretrained"], budget, 0, 240)
    assert k == arm_key(ArmSpec(), budget, 0, 240)
    assert len({k, arm_key(ARMS["pretrained"], budget, 1, 240), arm_key(ARMS["pretrained"], budget, 0, 241),
                arm_key(ARMS["epsilon"], budget, 0, 240)}) == 4


def test_random_minilm_has_its_own_fingerprint_and_random_weights():
    trained, random = encoder_fingerprint("all-MiniLM-L6-v2"), encoder_fingerprint("all-MiniLM-L6-v2:random")
    assert trained != random and text_embed_dim("all-MiniLM-L6-v2:random") == 384
    encoder = load_text_encoder("all-MiniLM-L6-v2:random", max_length=16)
    assert encoder.fingerprint == random           # the embedding cache's key, with or without loading
    word = encoder.model.embeddings.word_embeddings.weight
    assert abs(float(word.std()) - 0.02) < 0.002   # BERT's initializer_range, not the trained weights (~0.05)
    with pytest.raises(ValueError, match="random"):
        encoder_fingerprint("tiny-t5:random")


def test_chance_level_of_the_attribute_plots_is_one_over_the_number_of_values():
    from minimagen.tools.findings_plots import chance_attribute_accuracy
    # 6 colours, 4 shapes, 2 sizes, 2 materials, 3 positions (data/scenes_render.py)
    assert chance_attribute_accuracy() == pytest.approx((1 / 6 + 1 / 4 + 1 / 2 + 1 / 2 + 1 / 3) / 5)


def test_a_higher_pixel_error_is_worse_not_better():
    def results(values, metric):
        return [{"seed": i, "by_set": {"a": {metric: v}}} for i, v in enumerate(values)]
    up = F.paired_difference(results([0.6, 0.7, 0.8], "attributes"), results([0.5, 0.6, 0.7], "attributes"))
    assert up["verdict"] == "better"                                  # +0.1 on every seed
    err = F.paired_difference(results([0.02, 0.03, 0.04], "mse_to_real"), results([0.01, 0.02, 0.03], "mse_to_real"),
                              "mse_to_real")
    assert err["mean"] == pytest.approx(0.01) and err["verdict"] == "worse"
