"""Multi-process training (DDP under torchrun, gloo on CPU) and the logic of the GPU fast path.

The end-to-end check runs train_small.py twice on the same global batch of 16: once in one process, once as
2 gloo processes of 8 rows each under `torchrun --standalone`, and compares the results.

Why the tolerance: both runs compute the same mathematical step (same rows, same per-row noise, timesteps
and dropout: `Trainer` draws them for the global batch and each rank keeps its rows), but DDP averages two
half-batch gradients (g0 + g1) / 2 where one process sums all 16 rows at once. Float32 summation order
changes the gradient in its ~7th significant digit. Losses (computed before any update differs much) agree
to 1e-5 relative. AdamW divides by sqrt(v), so a coordinate whose gradient is ~0 can turn such rounding into
a full-size step of +-lr; over k steps no weight can move more than ~sum(lr) (the "budget"), so we require
every weight to agree within 2 % of the budget and the mean difference to be < 0.1 % of it, while the
weights themselves move by far more than that (so the comparison is not vacuous).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimagen import distributed, training
from minimagen.cascade import Cascade
from minimagen.distributed import StageSampler
from minimagen.training import TrainConfig, Trainer, autocast_dtype

from tiny_run import tiny_config, tiny_data

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--preset", "ci", "--stages", "2", "--steps", "4", "--no-progress", "--threads", "1"]


# ----------------------------------------------------------------------------- how the global batch is split
@pytest.mark.parametrize("num_items, batch, world", [(103, 8, 2), (64, 12, 3), (40, 4, 4)])
def test_ranks_of_the_distributed_sampler_split_exactly_the_one_process_batches(num_items, batch, world):
    one = StageSampler(num_items, batch, seed=3, stage=1, rank=0, world_size=1)
    ranks = [StageSampler(num_items, batch, seed=3, stage=1, rank=r, world_size=world) for r in range(world)]
    assert one.steps_per_epoch == num_items // batch == ranks[0].steps_per_epoch
    seen_in_epoch = []
    for step in range(3 * one.steps_per_epoch + 1):  # crosses epoch boundaries
        full = one.indices(step)
        for r, sampler in enumerate(ranks):  # rank r holds rows r, r + world, ... of the global batch
            assert torch.equal(sampler.indices(step), full[r::world])
        seen_in_epoch += full.tolist()
        if step == one.steps_per_epoch - 1:  # an epoch never repeats an item
            assert len(set(seen_in_epoch)) == len(seen_in_epoch) == one.steps_per_epoch * batch
    assert not torch.equal(one.indices(0), one.indices(one.steps_per_epoch))  # a new permutation each epoch


@pytest.mark.parametrize("num_items, batch, world, fragment", [
    (100, 10, 3, "must be divisible by the number of processes (3)"),
    (5, 8, 1, "fewer than one batch of 8"),
])
def test_sampler_refuses_batches_it_cannot_split(num_items, batch, world, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        StageSampler(num_items, batch, rank=0, world_size=world)


def test_rank_rows_of_the_training_noise_reassemble_the_global_batch():
    cascade = Cascade(tiny_config(sizes=(8, 16)))
    for stage in (0, 1):
        full = cascade.training_draws(stage, 6, torch.Generator().manual_seed(0))
        parts = [full.select(slice(r, None, 3)) for r in range(3)]
        rebuilt = torch.empty_like(full.noise)
        for r, part in enumerate(parts):
            rebuilt[r::3] = part.noise
        assert torch.equal(rebuilt, full.noise)
        assert torch.equal(torch.stack([p.t for p in parts], 1).reshape(-1), full.t)


def test_grad_accumulation_takes_the_same_step_as_the_whole_batch():
    images, embeds, mask = tiny_data(batch=4)
    results = []
    for accum in (1, 2, 4):
        torch.manual_seed(0)
        cascade = Cascade(tiny_config())
        trainer = Trainer(cascade, TrainConfig(grad_accum_steps=accum, learning_rate=1e-3, warmup_steps=0))
        losses = [trainer.train_step(stage, images[stage], embeds, mask) for stage in (0, 1)]
        results.append((losses, cascade.state_dict()))
    for losses, state in results[1:]:
        assert losses == pytest.approx(results[0][0], rel=1e-6)
        for k, v in state.items():  # only float summation order differs (see the module docstring)
            assert torch.allclose(v, results[0][1][k], atol=2e-5), k


# ----------------------------------------------------------------------------- torchrun end to end
def _train_small(out: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, str(ROOT / "train_small.py"), *ARGS, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    _train_small(root / "one")
    two = _train_small(root / "two", nproc=2)
    return root, two


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}:{k}": v for f in sorted(directory.glob("stage*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.slow  # two train_small runs (~1 min together)
def test_two_gloo_processes_train_what_one_process_trains(runs):
    root, two = runs
    assert "2 processes (global batch 16)" in two.stdout
    one_losses = json.loads((root / "one" / "losses.json").read_text())
    two_losses = json.loads((root / "two" / "losses.json").read_text())
    assert one_losses.keys() == two_losses.keys() == {"0", "1"}
    for stage in one_losses:
        assert two_losses[stage] == pytest.approx(one_losses[stage], rel=1e-5)
    one, two_w = _weights(root / "one" / "final"), _weights(root / "two" / "final")
    assert one.keys() == two_w.keys()
    budget = sum(1e-3 * min(1.0, (k + 1) / 10) for k in range(4))  # ci preset: lr 1e-3, 10 warm-up steps, 4 steps
    diffs = torch.cat([(one[k] - two_w[k]).abs().flatten() for k in one])
    assert diffs.max() < 0.02 * budget and diffs.mean() < 1e-3 * budget
    config = Cascade.from_pretrained(root / "one" / "final").config
    torch.manual_seed(0)  # train_small's --seed 0 before building the cascade: these are the initial weights
    init = Cascade(config)
    moved = max((one[f"stage0.safetensors:{k}"] - v).abs().max() for k, v in init.unets[0].state_dict().items())
    assert moved > 0.5 * budget  # training really changed the weights, by far more than the tolerance


@pytest.mark.slow  # two train_small runs (~1 min together)
def test_only_rank_zero_writes_files(runs):
    root, _ = runs
    listing = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.parts[len(d.parts)] != "images")  # noqa: E731
    assert listing(root / "two") == listing(root / "one")
    # under torchrun the pre-rendered images go to a file-backed store that every rank maps
    assert (root / "two" / "images" / "images.json").is_file() and not (root / "one" / "images").exists()
    assert not list((root / "two").rglob("*.tmp-*"))


@pytest.mark.slow  # two train_small runs (~1 min together)
def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    root, _ = runs
    proc = _train_small(root / "two", "--resume", "--steps", "6")
    assert "resumed from" in proc.stdout and "step-00000008" in proc.stdout
    metrics = json.loads((root / "two" / "metrics.json").read_text())
    assert metrics["steps"] == [6, 6]
    losses = json.loads((root / "two" / "losses.json").read_text())
    assert [len(v) for v in losses.values()] == [6, 6]


# ----------------------------------------------------------------------------- GPU fast path, logic on CPU
@pytest.mark.parametrize("mixed_precision, bf16_supported, expected", [
    ("auto", True, torch.bfloat16),   # A100/H100/RTX 30xx+
    ("auto", False, torch.float16),   # V100/T4: fp16, with a GradScaler
    ("fp16", True, torch.float16),
    ("bf16", True, torch.bfloat16),
    ("no", True, None),
])
def test_autocast_dtype_on_a_gpu(mixed_precision, bf16_supported, expected):
    assert autocast_dtype(mixed_precision, torch.device("cuda"), bf16_supported=bf16_supported) == expected


def test_autocast_dtype_refuses_what_the_device_cannot_do():
    assert autocast_dtype("auto", torch.device("cpu")) is None  # CPU: fp32 (bf16 matmul is ~100x slower here)
    with pytest.raises(ValueError, match="is for CUDA GPUs"):
        autocast_dtype("bf16", torch.device("cpu"))
    with pytest.raises(ValueError, match="no bf16 support"):
        autocast_dtype("bf16", torch.device("cuda"), bf16_supported=False)


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_fp16_training_goes_through_the_grad_scaler(monkeypatch):
    """The fp16 branch (scale -> unscale -> clip -> step -> update) runs; on CPU the scaler is a pass-through."""
    monkeypatch.setattr(training, "autocast_dtype", lambda *args, **kwargs: torch.float16)
    calls = []
    trainer = Trainer(Cascade(tiny_config(sizes=(8,))))
    for name in ("scale", "unscale_", "step", "update"):
        real = getattr(trainer.scaler, name)
        monkeypatch.setattr(trainer.scaler, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
    monkeypatch.setattr(trainer, "dtype", None)  # CPU can't autocast to fp16 quickly; the scaler path is the point
    images, embeds, mask = tiny_data()
    trainer.train_step(0, images[0], embeds, mask)
    assert calls == ["scale", "unscale_", "step", "update"] and trainer.steps == [1]


def test_torch_compile_option_trains_the_same_numbers(monkeypatch):
    """torch_compile=True routes the training forward through torch.compile (here its quick "eager" backend)."""
    real_compile = torch.compile
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(m) or real_compile(m, backend="eager"))
    images, embeds, mask = tiny_data()
    losses = []
    for flag in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(Cascade(tiny_config(sizes=(8,))), TrainConfig(torch_compile=flag))
        losses.append([trainer.train_step(0, images[0], embeds, mask) for _ in range(2)])
    assert len(compiled) == 1
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_single_process_helpers_need_no_process_group():
    assert distributed.rank_and_world_size() == (0, 1)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.device) == (0, 1, True, torch.device("cpu"))
    assert distributed.mean_over_ranks(2.5, info.device) == 2.5
    assert distributed.true_on_every_rank(False, info.device) is False and distributed.any_rank(True, info.device)
    distributed.barrier()
    distributed.cleanup()


def test_offloaded_sampling_gives_the_same_images_and_leaves_unets_on_the_cpu():
    torch.manual_seed(0)
    cascade = Cascade(tiny_config())
    _, embeds, mask = tiny_data()
    kwargs = dict(text_embeds=embeds, text_mask=mask, num_inference_steps=2, output_type="pt", progress=False)
    plain = cascade(generator=torch.Generator().manual_seed(1), **kwargs).images
    offloaded = cascade(generator=torch.Generator().manual_seed(1), offload=True, device="cpu", **kwargs).images
    assert torch.equal(plain, offloaded)
    assert all(p.device.type == "cpu" for p in cascade.parameters())


# ----------------------------------------------------------------------------- memory estimate, image store
def test_memory_estimate_counts_what_training_really_holds():
    from minimagen.tools.memory import activation_bytes, stage_memory
    config = tiny_config()
    # the meta-device count equals the same count on real CPU tensors (up to the attention kernel's small
    # bookkeeping tensors, which differ between the meta and the CPU kernels), and grows linearly with the batch
    unet = config.stages[1].unet
    assert activation_bytes(unet, 2, 5) == pytest.approx(activation_bytes(unet, 2, 5, device="cpu"), rel=0.01)
    per_image = activation_bytes(unet, 2, 5) - activation_bytes(unet, 1, 5)
    assert activation_bytes(unet, 4, 5) == activation_bytes(unet, 1, 5) + 3 * per_image
    # static part: weights + grads + both AdamW moments + EMA of the trained stage, weights + EMA of the others
    cascade = Cascade(config)
    trainer = Trainer(cascade)
    images, embeds, mask = tiny_data()
    trainer.train_step(1, images[1], embeds, mask)
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    adam = [v for state in trainer.optimizers[1].state.values() for v in state.values() if v.dim() > 0]
    held = nbytes(cascade.unets.parameters()) + nbytes(cascade.ema_unets.parameters()) + nbytes(adam) \
        + nbytes(cascade.unets[1].parameters())  # + the gradients, alive between backward and zero_grad
    estimate = stage_memory(config, 1, micro_batch=0)["static_bytes"]
    assert estimate == pytest.approx(held, rel=0.01)


def test_file_backed_images_are_rendered_once_and_mapped_after(tmp_path):
    from minimagen.data.prepare import prepare_training_data
    from minimagen.tools.run_presets import RUN_PRESETS
    import dataclasses
    preset = dataclasses.replace(RUN_PRESETS["ci"], num_items=12, text_encoder="tiny-t5", max_length=64)
    in_ram = prepare_training_data(preset, cache_dir=tmp_path / "cache", progress=False)
    first = prepare_training_data(preset, cache_dir=tmp_path / "cache", progress=False, image_store=tmp_path / "img")
    assert (tmp_path / "img" / "images.json").is_file()
    for k in range(len(preset.sizes)):
        assert torch.equal(first.images[k], in_ram.images[k])
        (tmp_path / "img" / f"images_{preset.sizes[k]}px.u8").touch()
    calls = []
    import minimagen.data.shapes as shapes
    real = shapes.ShapesDataset.__getitem__
    shapes.ShapesDataset.__getitem__ = lambda self, i: calls.append(i) or real(self, i)
    try:
        again = prepare_training_data(preset, cache_dir=tmp_path / "cache", progress=False, image_store=tmp_path / "img")
    finally:
        shapes.ShapesDataset.__getitem__ = real
    assert calls == []  # nothing rendered: the files were mapped
    assert all(torch.equal(a, b) for a, b in zip(again.images, in_ram.images))
    assert torch.equal(again.caption_index, in_ram.caption_index)


@pytest.mark.slow  # a torchrun job interrupted mid-training (~30 s)
def test_ctrl_c_under_torchrun_saves_one_checkpoint_at_the_same_step_on_every_rank(tmp_path):
    import threading
    import time
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_small.py"), "--preset", "ci", "--steps", "100000", "--no-progress", "--threads", "1",
           "--checkpoint-every", "20", "--out", str(out)]
    # a new session: the terminal's Ctrl-C reaches torchrun and both workers, as here
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    # wait for progress, not seconds: both ranks have trained 20 steps and saved them. (Interrupting right after
    # the 10-step speed line instead hangs the job in about a third of the tries, both ranks inside a DDP
    # backward, until torchrun kills it after 30 s: a known, not yet understood problem, see the README.)
    periodic = out / "checkpoints" / "step-00000020" / "trainer_state.json"
    while not periodic.is_file() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    log = "".join(lines)
    assert "interrupted: saved" in log and "torchrun ... train_small.py" in log, log[-3000:]
    steps = json.loads((out / "losses.json").read_text())["0"]
    checkpoint = sorted((out / "checkpoints").glob("step-*"))[-1:]  # the newest: the one Ctrl-C saved
    assert [c.name for c in checkpoint] == [f"step-{len(steps):08d}"]  # losses and weights of the same step
    state = json.loads((checkpoint[0] / "trainer_state.json").read_text())
    assert state["steps"][0] == len(steps) > 0
