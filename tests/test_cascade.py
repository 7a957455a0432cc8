"""The cascade: training loss, noise conditioning augmentation, sampling, EMA, checkpoints, exact resume."""
import math

import pytest
import torch

from minimagen.cascade import Cascade, CascadeConfig, tiny_cascade_config
from minimagen.checkpoint import CheckpointError
from minimagen.conditioning import augmentation_schedule, downsample, prepare_lowres_condition
from minimagen.text_encoder import load_text_encoder
from minimagen.training import TrainConfig, Trainer, latest_checkpoint

SIZES = (8, 16, 32)


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("tiny-t5")


def tiny_config(encoder, sizes=SIZES, **stage_kwargs) -> CascadeConfig:
    return tiny_cascade_config(sizes, text_encoder="tiny-t5", text_embed_dim=encoder.embed_dim, **stage_kwargs)


def tiny_cascade(encoder, seed=0, **kw) -> Cascade:
    torch.manual_seed(seed)
    return Cascade(tiny_config(encoder, **kw), text_encoder=encoder)


def test_lowres_condition_is_resized_then_normalised_then_noised():
    img = torch.rand(2, 3, 8, 8)
    level = torch.tensor([0, 250])
    noise = torch.randn(2, 3, 16, 16)
    out = prepare_lowres_condition(img, 16, level, noise=noise)
    up = torch.nn.functional.interpolate(img, size=16, mode="bilinear", align_corners=False) * 2 - 1
    abar = augmentation_schedule().alphas_cumprod[level].float().view(2, 1, 1, 1)
    torch.testing.assert_close(out, abar.sqrt() * up + (1 - abar).sqrt() * noise)


def test_lowres_condition_same_distribution_at_training_and_sampling(encoder):
    """The train path (downsample the image) and the sample path (previous stage's output) meet in one function:
    for the same level and the same low-res pixels, the condition's mean/std agree."""
    torch.manual_seed(0)
    images = torch.rand(64, 3, 16, 16)
    lowres = downsample(images, 8)
    level = 300
    gen = torch.Generator().manual_seed(1)
    train_cond = prepare_lowres_condition(lowres, 16, torch.full((64,), level), generator=gen)
    sample_cond = prepare_lowres_condition(lowres.clone(), 16, level, generator=torch.Generator().manual_seed(2))
    abar = float(augmentation_schedule().alphas_cumprod[level])
    expected_mean = math.sqrt(abar) * float((lowres * 2 - 1).mean())  # E[c_aug] = sqrt(abar) E[c]
    for c in (train_cond, sample_cond):
        assert abs(float(c.mean()) - expected_mean) < 0.02
    assert abs(float(train_cond.std()) - float(sample_cond.std())) < 0.02


def test_base_and_sr_stage_losses_are_finite_and_backpropagate(encoder):
    cascade = tiny_cascade(encoder)
    embeds, mask = cascade.encode_text(["a red circle", "a blue square"])
    for stage, size in enumerate(SIZES):
        images = torch.rand(2, 3, size, size)
        loss = cascade.training_loss(stage, images, embeds, mask, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and loss.item() > 0
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cascade.unets[stage].parameters())


def test_cascade_samples_every_stage_at_its_size(encoder):
    cascade = tiny_cascade(encoder)
    out = cascade(["a red circle", "a blue square"], num_inference_steps=3, output_type="pt",
                  return_all_stages=True, generator=torch.Generator().manual_seed(0), progress=False)
    assert [tuple(x.shape) for x in out.all_stages] == [(2, 3, s, s) for s in SIZES]
    assert out.images.shape == (2, 3, 32, 32)
    assert out.images.min() >= 0 and out.images.max() <= 1
    pil = cascade("a red circle", num_inference_steps=2, num_stages=1, progress=False).images
    assert pil[0].size == (8, 8)


def test_guidance_scale_one_equals_the_plain_conditional_sampler(encoder):
    cascade = tiny_cascade(encoder)
    kw = dict(num_inference_steps=4, num_stages=1, output_type="pt", progress=False, sampler="ddpm")
    guided = cascade(["a red circle"], guidance_scale=1.0, generator=torch.Generator().manual_seed(3), **kw).images
    # the plain conditional sampler, built by hand from the library's pieces
    from minimagen.diffusion import sample_loop
    unet = cascade.sampling_unet(0)
    embeds, mask = cascade.encode_text(["a red circle"])
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn((1, 3, 8, 8), generator=gen)
    x0 = sample_loop(lambda x, t: unet(x, t, embeds, mask), x_T, cascade.schedules[0], 4, sampler="ddpm",
                     thresholding="dynamic", generator=gen)
    torch.testing.assert_close(guided, (x0.clamp(-1, 1) + 1) / 2)


def test_train_one_stage_alone_with_ground_truth_lowres(encoder):
    cascade = tiny_cascade(encoder)
    trainer = Trainer(cascade, TrainConfig(learning_rate=1e-3, warmup_steps=1))
    embeds, mask = cascade.encode_text(["a red circle"] * 2)
    images = torch.rand(2, 3, 16, 16)
    loss = trainer.train_step(1, images, embeds, mask, lowres_images=torch.rand(2, 3, 8, 8))
    assert math.isfinite(loss) and trainer.steps == [0, 1, 0]


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_gradient_accumulation_divides_the_loss(encoder, monkeypatch):
    """Batch 4 as two micro-batches of 2 gives the gradient of batch 4 in one go (not twice it).
    Adam would hide a missing division (it is nearly scale-invariant), so the gradients are compared directly."""
    embeds, mask = encoder.encode(["a red circle", "a blue square", "a green star", "a cyan diamond"])
    images = torch.rand(4, 3, 8, 8)
    grads = {}
    for accum in (1, 2, 3):
        cascade = tiny_cascade(encoder, sizes=(8,))
        t = torch.zeros(4, dtype=torch.long)

        def deterministic_loss(stage, imgs, emb, msk, **kw):  # no randomness: only the batching differs
            return (cascade.unets[0](imgs * 2 - 1, t[: len(imgs)], emb, msk) ** 2).mean()

        monkeypatch.setattr(cascade, "training_loss", deterministic_loss)
        trainer = Trainer(cascade, TrainConfig(grad_accum_steps=accum, grad_clip_norm=0.0))
        captured = []
        monkeypatch.setattr(trainer.optimizers[0], "step",
                            lambda *a, **k: captured.append([p.grad.clone() for p in cascade.unets[0].parameters()]))
        trainer.train_step(0, images, embeds, mask)
        grads[accum] = captured[0]
    for accum in (2, 3):  # 3 micro-batches of sizes 2, 1, 1: weighted by size, not averaged per chunk
        for a, b in zip(grads[1], grads[accum]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_save_load_round_trip_is_bit_exact(encoder, tmp_path):
    cascade = tiny_cascade(encoder)
    Trainer(cascade)  # creates the EMA copies
    cascade.save_pretrained(tmp_path / "ckpt")
    loaded = Cascade.from_pretrained(tmp_path / "ckpt", text_encoder=encoder)
    assert loaded.config.to_dict() == cascade.config.to_dict()
    for a, b in zip(cascade.state_dict().items(), loaded.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert loaded.ema_unets is not None


def test_truncated_or_tampered_checkpoint_gives_a_clear_error(encoder, tmp_path):
    cascade = tiny_cascade(encoder)
    path = cascade.save_pretrained(tmp_path / "ckpt")
    weights = path / "stage1.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="stage1.safetensors.*(truncated|corrupt)"):
        Cascade.from_pretrained(path, text_encoder=encoder)
    with pytest.raises(CheckpointError, match="does not exist"):
        Cascade.from_pretrained(tmp_path / "nope")
    (path / "config.json").write_text('{"format": "diffusers"}')
    with pytest.raises(CheckpointError, match="not a minimagen cascade config"):
        Cascade.from_pretrained(path)


def _train(cascade, trainer, data, steps):
    embeds, mask, images = data
    for _ in range(steps):
        for stage in range(cascade.num_stages):
            trainer.train_step(stage, images[stage], embeds, mask)


def test_resume_is_exact(encoder, tmp_path):
    torch.manual_seed(0)
    embeds, mask = encoder.encode(["a red circle", "a blue square"])
    data = (embeds, mask, [torch.rand(2, 3, s, s) for s in SIZES])
    cfg = TrainConfig(learning_rate=1e-3, warmup_steps=2, seed=7)

    straight = tiny_cascade(encoder, seed=1)
    t1 = Trainer(straight, cfg)
    _train(straight, t1, data, 5)

    first = tiny_cascade(encoder, seed=1)
    t2 = Trainer(first, cfg)
    _train(first, t2, data, 3)
    t2.save_checkpoint(tmp_path / "ckpts")
    resumed = tiny_cascade(encoder, seed=99)  # different init: everything must come from the checkpoint
    t3 = Trainer(resumed, cfg)
    t3.load_checkpoint(latest_checkpoint(tmp_path / "ckpts"))
    _train(resumed, t3, data, 2)

    assert t3.steps == t1.steps == [5, 5, 5]
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    for a, b in zip(straight.ema_unets.parameters(), resumed.ema_unets.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_overfit_one_batch_samples_match_the_training_images(encoder):
    """Answers "loss goes down but samples are pure noise": a tiny base stage trained on 4 fixed images
    reproduces them from their captions through the real sampler (CFG + dynamic thresholding + DDIM)."""
    from minimagen.data.shapes import SceneSpec, ShapeSpec, render_scene
    specs = [SceneSpec((ShapeSpec("circle", "red", "large", "center"),)),
             SceneSpec((ShapeSpec("square", "blue", "large", "top left"),)),
             SceneSpec((ShapeSpec("triangle", "green", "large", "bottom right"),)),
             SceneSpec((ShapeSpec("circle", "yellow", "large", "top right"),))]
    captions = ["red circle", "blue square", "green triangle", "yellow circle"]
    images = torch.stack([render_scene(s, 16) for s in specs])
    cascade = tiny_cascade(encoder, sizes=(16,), prediction_type="v_prediction")
    trainer = Trainer(cascade, TrainConfig(learning_rate=2e-3, warmup_steps=20, ema_decay=0.99))
    embeds, mask = cascade.encode_text(captions)
    losses = [trainer.train_step(0, images, embeds, mask) for _ in range(400)]
    assert sum(losses[-20:]) / 20 < 0.3 * sum(losses[:20]) / 20
    out = cascade(captions, guidance_scale=3.0, num_inference_steps=25, output_type="pt", progress=False,
                  generator=torch.Generator().manual_seed(0)).images
    mse = ((out - images) ** 2).mean(dim=(1, 2, 3))
    mse_random = ((torch.rand_like(images) - images) ** 2).mean(dim=(1, 2, 3))
    assert (mse < 0.35 * mse_random).all(), (mse, mse_random)  # measured: ~0.1-0.25x, thread-count dependent


def test_ema_only_half_precision_checkpoint_loads_the_ema_weights(encoder, tmp_path):
    """The small file format for sharing: EMA weights only, stored in fp16, loaded back into fp32 U-Nets."""
    cascade = tiny_cascade(encoder)
    Trainer(cascade)
    with torch.no_grad():
        for p in cascade.ema_unets.parameters():
            p.add_(0.01)  # make EMA differ from raw
    path = cascade.save_pretrained(tmp_path / "small", ema_only=True, dtype=torch.float16)
    assert not (path / "stage0.safetensors").exists() and (path / "stage0.ema.safetensors").exists()
    loaded = Cascade.from_pretrained(path, text_encoder=encoder)
    for a, b, c in zip(cascade.ema_unets.parameters(), loaded.ema_unets.parameters(), loaded.unets.parameters()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a.half().float())
        torch.testing.assert_close(c, b)
