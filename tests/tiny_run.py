"""A tiny, resumable training run for tests/test_crash_safety.py, plus the tiny cascade the reliability tests share.

    python tests/tiny_run.py OUT --iterations 12 --checkpoint-every 3 [--resume] [--pause-in-save-at K]

Two stages (8 -> 16 px) and fixed random caption embeddings instead of a text encoder, so the process starts in
about 2 s. Each iteration trains both stages one step, so the checkpoint after iteration k is
OUT/checkpoints/step-{2k:08d}. It prints "iteration k" after each one. Like train_small.py: a checkpoint every
--checkpoint-every iterations, Ctrl-C finishes the iteration, saves and exits 130, and the end saves a final
checkpoint and writes OUT/done.

--pause-in-save-at K is a test hook that lives only in this file: during the save after iteration K, once the
cascade's weights are written but before trainer_state.json, it creates OUT/paused-in-save and sleeps, so a
test can kill -9 the process in the middle of a checkpoint write at a known moment.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import torch

from minimagen.cascade import Cascade, CascadeConfig, tiny_cascade_config
from minimagen import checkpoint
from minimagen.training import TrainConfig, Trainer, latest_checkpoint

EMBED_DIM = 64  # width of "tiny-t5" tokens: CascadeConfig knows it offline, nothing is loaded
SIZES = (8, 16)


def tiny_config(sizes=SIZES, **stage_kwargs) -> CascadeConfig:
    """The library's tiny cascade preset at `sizes` (base first) for the "tiny-t5" text encoder."""
    return tiny_cascade_config(sizes, text_encoder="tiny-t5", text_embed_dim=EMBED_DIM, **stage_kwargs)


def tiny_data(batch: int = 2, seed: int = 0):
    """Fixed (images per stage, text_embeds [B, 5, D], text_mask [B, 5]) from a seed."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(batch, 3, s, s, generator=gen) for s in SIZES]
    embeds = torch.randn(batch, 5, EMBED_DIM, generator=gen)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False  # one shorter caption, so padding is exercised
    return images, embeds * mask[..., None], mask


def train(out: Path, iterations: int, checkpoint_every: int, resume: bool = False,
          stop_requested=lambda: False, on_trainer=lambda trainer: None) -> Path:
    """Train (or resume) to `iterations`; returns the final checkpoint (saved early when stop_requested())."""
    torch.manual_seed(0)  # initialisation
    cascade = Cascade(tiny_config())
    trainer = Trainer(cascade, TrainConfig(learning_rate=1e-3, warmup_steps=2, seed=3))
    on_trainer(trainer)
    root = out / "checkpoints"
    if resume:
        trainer.load_checkpoint(latest_checkpoint(root))
        print(f"resumed at iteration {trainer.steps[0]}", flush=True)
    images, embeds, mask = tiny_data()
    while trainer.steps[0] < iterations and not stop_requested():
        for stage in range(cascade.num_stages):
            trainer.train_step(stage, images[stage], embeds, mask)
        k = trainer.steps[0]
        print(f"iteration {k}", flush=True)
        if checkpoint_every and k % checkpoint_every == 0:
            trainer.save_checkpoint(root)
    return trainer.save_checkpoint(root)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-in-save-at", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same thread count in every run, so runs are bit-comparable

    trainer_box = []
    if args.pause_in_save_at is not None:  # the test hook described in the module docstring
        real_write_json = checkpoint.write_json

        def write_json_after_pausing(path, obj):
            if trainer_box[0].steps[0] == args.pause_in_save_at and path.name == "trainer_state.json":
                (args.out / "paused-in-save").touch()
                time.sleep(60)
            real_write_json(path, obj)
        checkpoint.write_json = write_json_after_pausing

    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
    signal.signal(signal.SIGINT, on_sigint)

    path = train(args.out, args.iterations, args.checkpoint_every, args.resume, stop_requested=lambda: interrupted,
                 on_trainer=trainer_box.append)
    if interrupted:
        print(f"interrupted: saved {path}", flush=True)
        sys.exit(130)
    (args.out / "done").touch()


if __name__ == "__main__":
    main()
