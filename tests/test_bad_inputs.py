"""Bad inputs end in a message that names what is wrong and how to fix it — never a traceback from deep inside
torch, a silent wrong result, or lost work.

Each case asserts the exception type and fragments of its message: the offending argument, field or file, and
the fix (the allowed values, or what to do). Groups here: captions, sampling, low-res inputs, configs.
Checkpoints, data folders, text encoders and training: tests/test_bad_files_and_training.py.
"""
import math

import pytest
import torch

from minimagen.cascade import Cascade, CascadeConfig, StageConfig
from minimagen.conditioning import prepare_lowres_condition
from minimagen.networks.configs import UNetConfig, unet_config
from minimagen.text_encoder import load_text_encoder
from minimagen.training import TrainConfig, Trainer
from expect import raises
from tiny_run import tiny_config

FAST = dict(num_inference_steps=2, output_type="pt", progress=False)


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
    (dict(sampler="plms"), ValueError, ("sampler", "'ddim'", "'ddpm'", "'plms'")),
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
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, ("NaN or infinite values", "check the data pipeline")),
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
