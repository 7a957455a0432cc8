"""Training one stage of the cascade: AdamW with warm-up, gradient accumulation and clipping, EMA, checkpoints.

The trainer knows nothing about data (like minGPT's): `Trainer.train_step(stage, images, text_embeds,
text_mask)` takes one full batch, splits it into `grad_accum_steps` micro-batches, and makes one optimizer
step. Each stage has its own optimizer, learning-rate schedule, EMA and step counter, so the stages of a
cascade can be trained one at a time or interleaved (the paper trains them independently).

Exact resume: all randomness of step k of stage s (timesteps, noise, caption dropout) comes from
`step_generator(seed, s, k)`, so a run stopped after N steps and resumed from its checkpoint takes exactly
the steps an uninterrupted run would have taken. The draws are made for the whole batch and then split into
micro-batches (and across ranks under torchrun: see `distributed.py`), so grad accumulation and N processes
compute the same step as one process on the whole batch.

GPU fast path (all off or automatic on CPU): bf16 autocast (fp16 + GradScaler where bf16 is missing),
`torch_compile`, DistributedDataParallel when a process group is initialised; TF32 and pinned memory are set
by the training script (train_small.py).

EMA with warm-up: decay_k = min(ema_decay, (1 + k) / (10 + k)). A plain decay of 0.9999 averages over
~10,000 steps, so a short run sampled from its EMA would show a nearly random network — the "samples are pure
noise" complaint about other ports; the warm-up makes the EMA track the raw weights early on.

Contents: `TrainConfig`, `step_generator`, `NonFiniteLossError`, `autocast_dtype`, `Trainer` (train_step,
save_checkpoint / load_checkpoint, whose file format lives in checkpoint.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint, distributed
from .conditioning import check_text
from .checkpoint import latest_checkpoint  # noqa: F401 - re-exported: `from minimagen.training import latest_checkpoint`

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage (validated on construction)."""

    learning_rate: float = 1e-4           # AdamW peak learning rate (reached after warm-up)
    warmup_steps: int = 100               # linear learning-rate warm-up from 0
    weight_decay: float = 0.0             # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.99)  # AdamW (beta1, beta2)
    grad_clip_norm: float = 1.0           # clip the global gradient norm to this (0 = off)
    grad_accum_steps: int = 1             # micro-batches per optimizer step; the loss is divided by their number
    ema_decay: float = 0.999              # EMA decay after warm-up (paper scale: 0.9999 over millions of steps)
    mixed_precision: str = "auto"         # "auto" = bf16 autocast on CUDA if supported else fp16; CPU: fp32 always
    torch_compile: bool = False           # torch.compile the U-Net being trained (GPU; the first steps compile)
    seed: int = 0                         # seeds step_generator: same seed -> same run

    def __post_init__(self) -> None:
        for name in ("learning_rate", "weight_decay", "grad_clip_norm", "ema_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r} (from a command line or JSON, use float())")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        for name in ("warmup_steps", "grad_accum_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        betas = self.adam_betas
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"adam_betas must be two numbers (beta1, beta2) in [0, 1), got {self.adam_betas!r}; "
                             "the default is (0.9, 0.99)")
        self.adam_betas = tuple(self.adam_betas)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 (typical: 1e-4 to 1e-3), got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 (0 = off), got {self.weight_decay}")
        if self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be >= 0 (0 = off), got {self.grad_clip_norm}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: training stops instead of corrupting the weights."""


def step_generator(seed: int, stage: int, step: int, stream: int = 0, device="cpu") -> torch.Generator:
    """The generator for all randomness of one (stage, step[, stream]): makes resume exact.

    device="cuda" draws the noise on the GPU (a CPU generator would make 1024x1024 noise on the CPU and copy it).
    """
    return torch.Generator(device=device).manual_seed(((seed * 1_000_003 + stage) * 1_000_033 + step) * 101 + stream)


def autocast_dtype(mixed_precision: str, device: torch.device, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for this device, or None for plain fp32 (always on CPU: bf16 is ~100x slower there).

    bf16_supported: whether the GPU computes in bf16 (default: torch.cuda.is_bf16_supported(); V100/T4 cannot,
    so "auto" falls back to fp16, which `Trainer` pairs with a GradScaler).
    """
    if device.type != "cuda":
        if mixed_precision in ("bf16", "fp16"):
            raise ValueError(f"mixed_precision={mixed_precision!r} is for CUDA GPUs; on {device.type} train in "
                             "fp32 (mixed_precision='no' or 'auto')")
        return None
    if mixed_precision == "no":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if mixed_precision == "bf16" and not bf16_supported:
        raise ValueError("mixed_precision='bf16' but this GPU has no bf16 support; use 'fp16' (with a grad scaler) "
                         "or 'auto'")
    if mixed_precision == "fp16" or (mixed_precision == "auto" and not bf16_supported):
        return torch.float16
    return torch.bfloat16


class Trainer:
    """Trains the stages of a `Cascade` (each with its own AdamW, LR schedule, EMA and step counter).

    Under torchrun (a process group initialised, see `distributed.init_distributed`) each rank passes its own
    rows of the global batch to `train_step` and the U-Net is wrapped in DistributedDataParallel.
    """

    def __init__(self, cascade, config: TrainConfig | None = None):
        self.cascade = cascade
        self.config = config or TrainConfig()
        cfg = self.config
        if cascade.ema_unets is None:
            cascade.ema_unets = copy.deepcopy(cascade.unets).requires_grad_(False)
        fused = cascade.device.type in ("cpu", "cuda")  # one AdamW kernel for all parameters: 5-9 % faster CPU steps here
        self.optimizers = [torch.optim.AdamW(u.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas,
                                             weight_decay=cfg.weight_decay, fused=fused) for u in cascade.unets]
        warm = max(cfg.warmup_steps, 1)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: min(1.0, (k + 1) / warm))
                           for o in self.optimizers]
        self.steps = [0] * cascade.num_stages
        self.dtype = autocast_dtype(cfg.mixed_precision, cascade.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.rank, self.world_size = distributed.rank_and_world_size()
        self._train_modules: dict[int, torch.nn.Module] = {}  # stage -> DDP / compiled wrapper, made on first use

    def train_module(self, stage: int) -> torch.nn.Module:
        """The module that computes stage's training forward: the U-Net, wrapped in DDP / torch.compile if on."""
        if stage not in self._train_modules:
            module = self.cascade.unets[stage]
            if self.world_size > 1:
                device = self.cascade.device
                # DDP copies rank 0's weights to every rank here; a fresh stage's EMA starts from those weights
                module = torch.nn.parallel.DistributedDataParallel(
                    module, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
                if self.steps[stage] == 0:
                    self.cascade.ema_unets[stage].load_state_dict(self.cascade.unets[stage].state_dict())
            if self.config.torch_compile:
                module = torch.compile(module)
            self._train_modules[stage] = module
        return self._train_modules[stage]

    def train_step(self, stage: int, images: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                   lowres_images: torch.Tensor | None = None, unet: torch.nn.Module | None = None) -> float:
        """One optimizer step of `stage`; returns the mean loss over the (global) batch.

        images etc.: this process's rows of the batch (all of it in a single process; under torchrun rows
        rank, rank + N, ... of the global batch, as `distributed.StageSampler` gives them). If anything fails
        before the optimizer step, the gradients of the micro-batches already done are dropped, so the next step
        starts clean.
        """
        cfg, cascade = self.config, self.cascade
        if not 0 <= stage < cascade.num_stages:
            raise ValueError(f"stage must be in [0, {cascade.num_stages - 1}] (this cascade has {cascade.num_stages} "
                             f"stages, 0 = base), got {stage}")
        cascade._check_images(images, cascade.config.stages[stage].image_size, "images")  # before any slicing
        check_text(text_embeds, text_mask, images.shape[0], cascade.config.text_embed_dim)
        model = unet if unet is not None else self.train_module(stage)
        cascade.unets[stage].train()
        batch, device = images.shape[0], cascade.device
        # all draws of this step, for the global batch; this rank keeps rows rank, rank + N, ...
        gen = step_generator(cfg.seed, stage, self.steps[stage], device=device)
        draws = cascade.training_draws(stage, batch * self.world_size, gen, device)
        draws = draws.select(slice(self.rank, None, self.world_size))
        chunks = torch.arange(batch).tensor_split(min(cfg.grad_accum_steps, batch))
        opt, total = self.optimizers[stage], 0.0
        try:
            for micro, idx in enumerate(chunks):
                low = None if lowres_images is None else lowres_images[idx]
                sync_now = micro == len(chunks) - 1  # DDP all-reduces gradients only in the last micro-batch
                no_sync = model.no_sync() if hasattr(model, "no_sync") and not sync_now else contextlib.nullcontext()
                with no_sync:
                    with torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                        loss = cascade.training_loss(stage, images[idx], text_embeds[idx], text_mask[idx],
                                                     lowres_images=low, unet=model, draws=draws.select(idx))
                    self._stop_if_not_finite(stage, loss)
                    scaled = loss * (len(idx) / batch)  # mean over the full batch, whatever the micro-batch sizes
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                total += scaled.item()
        except BaseException:
            opt.zero_grad(set_to_none=True)  # drop earlier micro-batches' gradients: the next step starts clean
            raise
        if self.scaler:
            self.scaler.unscale_(opt)
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(cascade.unets[stage].parameters(), cfg.grad_clip_norm)
        if self.scaler:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        self.schedulers[stage].step()
        update_ema(self.cascade.ema_unets[stage], self.cascade.unets[stage], self.steps[stage], cfg.ema_decay)
        self.steps[stage] += 1
        return distributed.mean_over_ranks(total, device)

    def _stop_if_not_finite(self, stage: int, loss: torch.Tensor) -> None:
        """Raise NonFiniteLossError (on every rank at once, so none waits forever in an all-reduce)."""
        if distributed.true_on_every_rank(bool(torch.isfinite(loss)), self.cascade.device):
            return
        where = "" if self.world_size == 1 else f" (on rank {self.rank}: {loss.item()}; the job stops on every rank)"
        raise NonFiniteLossError(
            f"stage {stage}, step {self.steps[stage]}: the loss is {loss.item()}{where}. The weights were not "
            "updated. Try a lower learning_rate (or more warmup_steps), grad_clip_norm=1.0, or "
            "mixed_precision='no'; resume from the last good checkpoint.")

    # ---------------------------------------------------------------- checkpoints (file format: checkpoint.py)
    def save_checkpoint(self, root: str | Path, keep: int = 2) -> Path:
        """Write root/step-XXXXXXXX (cascade + optimizer state) atomically; keep the newest `keep`.

        Under torchrun only rank 0 writes (all ranks hold the same weights); the others wait for it.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (how many step-* directories to keep), got {keep}")
        target = Path(root) / f"step-{sum(self.steps):08d}"
        if self.rank == 0:
            state = {"steps": self.steps, "train_config": dataclasses.asdict(self.config)}
            checkpoint.save_training_checkpoint(target, self.cascade, state, self.optimizers, self.schedulers, keep)
        distributed.barrier()  # rank 0 has written it; the others may read it now
        return target

    def load_checkpoint(self, path: str | Path | None) -> None:
        """Restore weights, EMA, optimizer/scheduler state and step counters from a save_checkpoint directory.
        Everything is read and checked first; the trainer is changed only if the whole checkpoint is good."""
        steps, loaded, blobs = checkpoint.read_training_checkpoint(path, self.cascade)
        self.cascade.unets.load_state_dict(loaded.unets.state_dict())
        self.cascade.ema_unets.load_state_dict(loaded.ema_unets.state_dict())
        self.cascade.to(self.cascade.device)
        for opt, sch, states in zip(self.optimizers, self.schedulers, blobs):
            _load_optimizer_state(opt, sch, states, self.config)
        self.steps = steps


@torch.no_grad()
def update_ema(ema: torch.nn.Module, raw: torch.nn.Module, step: int, ema_decay: float) -> None:
    """One EMA update after optimizer step `step` (0-based), with warm-up: decay_k = min(ema_decay, (1+k)/(10+k))."""
    decay = min(ema_decay, (1 + step) / (10 + step))  # EMA warm-up
    for p_ema, p in zip(ema.parameters(), raw.parameters()):
        p_ema.lerp_(p, 1 - decay)                            # ema = decay * ema + (1 - decay) * p
    for b_ema, b in zip(ema.buffers(), raw.buffers()):
        b_ema.copy_(b)


def _load_optimizer_state(opt, sch, states: tuple[dict, dict], cfg: TrainConfig) -> None:
    """Adam's moments and the step come from the checkpoint, the hyper-parameters from this TrainConfig: a resume
    with a lower learning_rate (the NaN-loss advice) must take effect. Unchanged settings give the same numbers,
    so resume stays exact."""
    opt.load_state_dict(states[0])
    sch.load_state_dict(states[1])
    sch.base_lrs = [cfg.learning_rate for _ in opt.param_groups]
    lr = cfg.learning_rate * sch.lr_lambdas[0](sch.last_epoch)   # lr_k = lr * warmup(k), as LambdaLR does
    for group in opt.param_groups:
        group.update(initial_lr=cfg.learning_rate, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
