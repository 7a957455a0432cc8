"""Tests for minimagen.networks (U-Nets, blocks, configs): shapes, text masking, the null (CFG) path,
gradient flow, the Efficient U-Net's defining properties, paper-preset sizes and config validation."""
import dataclasses
import json
import math

import pytest
import torch

from minimagen.networks.blocks import Attention, ResBlock, timestep_embedding
from minimagen.networks.unet import UNET_PRESETS, UNet, UNetConfig, build_unet, count_parameters, unet_config

TINY = ["base-tiny", "sr-tiny", "sr-last-tiny"]


@pytest.fixture(autouse=True)
def single_thread():
    """These tiny models are dominated by per-op overhead; with 2 threads on a shared 2-core machine every op
    waits for a descheduled partner thread (measured: 18 s vs 6 s for this file). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomised(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter: zero-initialised output convs would otherwise hide all input dependence."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def inputs(config: UNetConfig, batch: int, size: int | None = None, text_len: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    S = size or config.image_size
    x = torch.randn(batch, config.in_channels, S, S, generator=g)
    kw = dict(timesteps=torch.randint(0, 1000, (batch,), generator=g),
              text_embeds=torch.randn(batch, text_len, config.text_embed_dim, generator=g),
              text_mask=torch.arange(text_len)[None, :] < torch.randint(1, text_len + 1, (batch, 1), generator=g))
    if config.lowres_cond:
        kw["lowres_image"] = torch.randn(batch, config.in_channels, S, S, generator=g)
        kw["noise_level"] = torch.randint(0, 1000, (batch,), generator=g)
    return x, kw


def shrunk(name: str) -> UNetConfig:
    """A paper preset with its layout (levels, attention placement, efficient/regular) but tiny widths."""
    cfg = UNET_PRESETS[name]
    if not name.startswith("imagen-"):
        return cfg
    return dataclasses.replace(cfg, base_channels=8, num_res_blocks=1, head_dim=8, text_embed_dim=16,
                               text_context_dim=8)


def build(config: UNetConfig, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return randomised(UNet(config), seed)


# ---- shapes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(UNET_PRESETS))
def test_every_preset_forward_gives_input_shaped_output_for_batch_1_and_3(name):
    config = shrunk(name)
    model = build(config)
    for batch in (1, 3):
        x, kw = inputs(config, batch)
        with torch.no_grad():
            assert model(x, **kw).shape == (batch, config.out_channels, config.image_size, config.image_size)


def test_last_sr_stage_trained_at_32_also_runs_at_64_and_128():
    config = unet_config("sr-last-tiny")
    assert config.image_size == 32 and config.fully_convolutional
    model = build(config)
    for size in (32, 64, 128):
        x, kw = inputs(config, 2, size=size)
        with torch.no_grad():
            assert model(x, **kw).shape == (2, 3, size, size)


def test_stage_with_self_attention_refuses_other_image_sizes():
    config = unet_config("sr-tiny")
    x, kw = inputs(config, 1, size=2 * config.image_size)
    with pytest.raises(ValueError, match="image_size"):
        UNet(config)(x, **kw)


def test_fresh_unet_predicts_zero_because_last_conv_is_zero_initialised():
    config = unet_config("base-tiny")
    x, kw = inputs(config, 2)
    assert torch.count_nonzero(UNet(config)(x, **kw)) == 0


# ---- text masking and the null (unconditional) path ---------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_changing_masked_text_tokens_leaves_output_unchanged(name):
    config = unet_config(name)
    model = build(config)
    x, kw = inputs(config, 3)
    garbage = kw["text_embeds"].clone()
    garbage[~kw["text_mask"]] = 1e4 * torch.randn(int((~kw["text_mask"]).sum()), config.text_embed_dim)
    with torch.no_grad():
        before = model(x, **kw)
        after = model(x, **{**kw, "text_embeds": garbage})
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    # sanity: the unmasked tokens do matter (a random change: LayerNorm would cancel a constant shift)
    changed = kw["text_embeds"].clone()
    changed[kw["text_mask"]] = torch.randn(int(kw["text_mask"].sum()), config.text_embed_dim)
    with torch.no_grad():
        assert not torch.allclose(model(x, **{**kw, "text_embeds": changed}), before, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_all_dropped_output_ignores_text_and_differs_from_conditioned(name):
    config = unet_config(name)
    model = build(config)
    x, kw = inputs(config, 2)
    drop = torch.ones(2, dtype=torch.bool)
    other = dict(text_embeds=torch.randn(2, 6, config.text_embed_dim), text_mask=torch.rand(2, 6) < 0.5)
    longer = dict(text_embeds=torch.randn(2, 9, config.text_embed_dim), text_mask=torch.rand(2, 9) < 0.5)
    with torch.no_grad():
        null_a = model(x, **kw, drop_text=drop)
        null_b = model(x, **{**kw, **other}, drop_text=drop)
        null_c = model(x, **{**kw, **longer}, drop_text=drop)
        conditioned = model(x, **kw)
    torch.testing.assert_close(null_b, null_a, atol=1e-6, rtol=0)
    # a different caption length only changes the attention kernel's summation order (float rounding)
    torch.testing.assert_close(null_c, null_a, atol=1e-5, rtol=0)
    assert torch.isfinite(null_a).all()
    assert not torch.allclose(conditioned, null_a, atol=1e-5)


def test_drop_text_acts_per_row():
    config = unet_config("base-tiny")
    model = build(config)
    x, kw = inputs(config, 2)
    with torch.no_grad():
        mixed = model(x, **kw, drop_text=torch.tensor([False, True]))
        cond = model(x, **kw)
        null = model(x, **kw, drop_text=torch.tensor([True, True]))
    torch.testing.assert_close(mixed[0], cond[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[1], null[1], atol=1e-6, rtol=0)


def test_caption_with_no_valid_tokens_gives_finite_output():
    config = unet_config("base-tiny")
    model = build(config)
    x, kw = inputs(config, 2)
    kw["text_mask"] = torch.zeros_like(kw["text_mask"])
    with torch.no_grad():
        assert torch.isfinite(model(x, **kw)).all()


# ---- gradients ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, overrides", [("base-tiny", dict(position_embedding=True)),
                                             ("sr-tiny", {}), ("sr-last-tiny", {})])
def test_gradients_reach_every_parameter_after_one_backward(name, overrides):
    config = unet_config(name, **overrides)
    model = build(config)
    x, kw = inputs(config, 3)
    model(x, **kw, drop_text=torch.tensor([False, True, False])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


# ---- the Efficient U-Net's defining properties (paper App. B.1) ------------------------------------------
def test_efficient_resblock_sum_is_scaled_by_inverse_sqrt2():
    block = ResBlock(8, 8, emb_dim=16, scale_residual=True)  # fresh: second conv is zero, so out = x / sqrt(2)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 16)), x / math.sqrt(2))


def resblock_input_sizes(model: UNet, x: torch.Tensor, kw: dict) -> set[int]:
    sizes = set()
    hooks = [m.register_forward_pre_hook(lambda _m, args: sizes.add(args[0].shape[-1]))
             for m in model.modules() if isinstance(m, ResBlock)]
    with torch.no_grad():
        model(x, **kw)
    for h in hooks:
        h.remove()
    return sizes


def test_efficient_layout_downsamples_before_any_resblock():
    config = unet_config("sr-tiny")
    x, kw = inputs(config, 1)
    assert max(resblock_input_sizes(UNet(config), x, kw)) == config.image_size // 2
    regular = unet_config("base-tiny")
    x, kw = inputs(regular, 1)
    assert max(resblock_input_sizes(UNet(regular), x, kw)) == regular.image_size


@pytest.mark.parametrize("name", ["sr-last-tiny", "imagen-sr-1024"])
def test_last_sr_stage_has_only_text_cross_attention(name):
    with torch.device("meta"):
        model = UNet(UNET_PRESETS[name])
    attention = [m for m in model.modules() if isinstance(m, Attention)]
    assert attention and not any(m.self_attention for m in attention)


# ---- paper presets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, paper_count", [("imagen-base-64", 2e9), ("imagen-sr-256", 600e6),
                                               ("imagen-sr-1024", 400e6)])
def test_paper_preset_parameter_count_within_20_percent_of_paper(name, paper_count):
    with torch.device("meta"):
        model = build_unet(UNET_PRESETS[name])
    assert abs(count_parameters(model) / paper_count - 1) <= 0.20


def test_timestep_embedding_matches_hand_computed_sinusoids():
    # dim 4 -> half 2, frequencies 10000**(-0/2) = 1 and 10000**(-1/2) = 0.01
    emb = timestep_embedding(torch.tensor([0, 1]), 4)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]])
    torch.testing.assert_close(emb, expected)


# ---- configs -----------------------------------------------------------------------------------------------
def test_config_round_trips_through_json():
    for config in UNET_PRESETS.values():
        assert UNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("overrides, field", [
    (dict(image_size=30), "image_size"),  # base-tiny downsamples twice: needs a multiple of 4
    (dict(attn_resolutions=(4,)), "attn_resolutions"),
    (dict(cross_attn_resolutions=(64,)), "cross_attn_resolutions"),
    (dict(base_channels=-32), "base_channels"),
    (dict(channel_mults=(1, -2, 4)), "channel_mults"),
    (dict(num_res_blocks=(1, 2)), "num_res_blocks"),
    (dict(dropout=1.5), "dropout"),
])
def test_bad_config_raises_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        unet_config("base-tiny", **overrides)


def test_position_embedding_on_super_resolution_stage_is_rejected():
    with pytest.raises(ValueError, match="position_embedding"):
        unet_config("sr-last-tiny", position_embedding=True)


def test_unknown_preset_error_lists_the_names():
    with pytest.raises(ValueError, match="base-tiny"):
        unet_config("imagen-xl")


def test_text_width_mismatch_at_forward_is_a_clear_error():
    config = unet_config("base-tiny")
    x, kw = inputs(config, 1)
    kw["text_embeds"] = torch.randn(1, 6, config.text_embed_dim + 1)
    with pytest.raises(ValueError, match="text_embed_dim"):
        UNet(config)(x, **kw)


def test_super_resolution_unet_without_lowres_image_is_a_clear_error():
    config = unet_config("sr-tiny")
    x, kw = inputs(config, 1)
    del kw["lowres_image"]
    with pytest.raises(ValueError, match="lowres_image"):
        UNet(config)(x, **kw)


def test_from_dict_rejects_unknown_fields_by_name():
    d = UNET_PRESETS["base-tiny"].to_dict() | {"n_heads": 4}
    with pytest.raises(ValueError, match="n_heads"):
        UNetConfig.from_dict(d)
