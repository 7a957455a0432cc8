"""train_small.py end to end: the CI preset trains all three stages, samples, scores and reports real numbers."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_train_small(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, str(ROOT / "train_small.py"), "--no-progress", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci_run")
    proc = run_train_small("--preset", "ci", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_ci_preset_writes_samples_and_real_metrics(ci_run):
    out, proc = ci_run
    assert (out / "samples.png").stat().st_size > 10_000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sizes"] == [16, 32, 64]
    assert metrics["steps"] == [60, 20, 20]
    for name in ("single_heldout", "single_train", "two"):
        stages = metrics["alignment"][name]
        assert len(stages) == 3
        for scores in stages:
            for key in ("color", "shape", "size", "position", "all_correct"):
                assert 0.0 <= scores[key] <= 1.0
    for stage, loss in metrics["loss_last100"].items():
        assert math.isfinite(loss) and loss > 0
    assert metrics["timings"]["total_s"] > 0
    assert (out / "final" / "config.json").exists()
    assert "done in" in proc.stdout


def test_ci_run_can_be_resumed_and_extended(ci_run, tmp_path):
    """--resume continues from the newest checkpoint: more steps for stage 0 only trains the difference."""
    out, _ = ci_run
    proc = run_train_small("--preset", "ci", "--out", str(out), "--resume", "--steps", "70", "20", "20")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == [70, 20, 20]


def test_unknown_preset_is_refused_with_the_choices():
    proc = run_train_small("--preset", "huge")
    assert proc.returncode != 0
    assert "invalid choice: 'huge'" in proc.stderr and "default" in proc.stderr


def test_run_presets_threshold_as_measured_static_on_flat_shapes_dynamic_on_the_guided_scenes_base():
    from minimagen.tools.run_presets import RUN_PRESETS
    assert RUN_PRESETS["default"].sampling_kwargs()["thresholding"] == ["static", "static", "static"]
    scenes = RUN_PRESETS["scenes"].sampling_kwargs()
    assert scenes["thresholding"] == ["dynamic", "static"]
    assert [w > 1 for w in scenes["guidance_scale"]] == [t == "dynamic" for t in scenes["thresholding"]]
    assert RUN_PRESETS["default"].sampling_kwargs(num_stages=3, start_stage=1)["thresholding"] == ["static", "static"]


@pytest.mark.parametrize("args, fragment", [
    (("--preset", "ci", "--mixed-precision", "bf16"), "--mixed-precision: mixed_precision='bf16' is for CUDA GPUs"),
    (("--preset", "gpu"), "--preset gpu needs a CUDA GPU"),
])
def test_settings_that_cannot_work_on_this_machine_are_refused_before_any_work(args, fragment, tmp_path):
    proc = run_train_small(*args, "--out", str(tmp_path / "run"), "--device", "cpu")
    assert proc.returncode != 0 and fragment in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "images").exists()


@pytest.mark.parametrize("args, fragment", [
    (("--steps", "-5"), "--steps -5: every stage needs >= 1 step"),
    (("--steps", "0"), "0 steps would sample an untrained cascade"),
    (("--batch-size", "0"), "--batch-size must be >= 1"),
    (("--stages", "0"), "--stages must lie in [1, 3]"),
    (("--max-length", "1"), "--max-length must be >= 2"),
    (("--checkpoint-every", "-1"), "--checkpoint-every must be >= 0"),
    (("--data", "/no/such/folder"), "--data /no/such/folder: no such folder"),
    (("--device", "cuda:0"), "sees no CUDA GPU"),
    (("--resume",), "--resume: no checkpoint in"),
    (("--noise-aug-max", "0"), "--noise-aug-max must lie in [1, 1000]"),
    (("--sample-noise-level", "1000"), "--sample-noise-level must lie in [0, 999]"),
    (("--min-snr-gamma", "0"), "--min-snr-gamma must be a number > 0"),
], ids=["steps_negative", "steps_zero", "batch_zero", "stages_zero", "max_length_one", "checkpoint_every_negative",
        "missing_data", "cuda_without_cuda", "resume_nothing", "noise_aug_zero", "sample_level_1000",
        "min_snr_zero"])
def test_argument_errors_print_one_line_and_exit_2_like_argparse(args, fragment, tmp_path):
    if "cuda" in " ".join(args):
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    proc = run_train_small("--preset", "ci", "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    proc = run_train_small("--preset", "ci", "--out", str(tmp_path / "taken"))
    assert proc.returncode == 2 and "is a file; give a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_with_other_stages_is_refused_before_data_preparation(ci_run):
    out, _ = ci_run
    proc = run_train_small("--preset", "ci", "--out", str(out), "--resume", "--stages", "2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "resume with the same --preset and --stages" in proc.stderr and "data:" not in proc.stdout


def test_resume_from_a_corrupt_newest_checkpoint_points_to_the_previous_one(tmp_path):
    import shutil
    from minimagen.cascade import Cascade
    from minimagen.tools.run_presets import RUN_PRESETS, build_cascade_config
    cascade = Cascade(build_cascade_config(RUN_PRESETS["ci"], text_embed_dim=384))
    for step in ("step-00000010", "step-00000020"):
        cascade.save_pretrained(tmp_path / "run" / "checkpoints" / step / "cascade")
    (tmp_path / "run" / "checkpoints" / "step-00000020" / "cascade" / "config.json").write_text("{trunc")
    proc = run_train_small("--preset", "ci", "--out", str(tmp_path / "run"), "--resume")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "step-00000010 may be intact" in proc.stderr and "move" in proc.stderr
    shutil.rmtree(tmp_path / "run")


def test_metrics_json_is_strict_json_without_bare_nan(ci_run):
    out, proc = ci_run
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert "smoke test" in proc.stdout  # the ci preset says its ~0 % scores are expected


def test_json_safe_replaces_non_finite_numbers_by_null():
    from minimagen.tools.report import json_safe
    assert json_safe({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "NaN"}) == \
        {"a": [1.0, None], "b": {"c": None}, "d": "NaN"}
