"""Train a small Imagen cascade end to end, then sample it and score how well it follows its captions.

    python train_small.py                       # default: 3 stages on the built-in captioned shapes, CPU ok
    python train_small.py --preset ci           # < 2 minutes: the smoke test CI runs
    python train_small.py --preset gpu          # the paper's 64 -> 256 -> 1024 shape, scaled to one ~24 GB GPU
    python train_small.py --out runs/x --resume # continue an interrupted run (Ctrl-C saves a checkpoint)
    python train_small.py --data my_folder --text-encoder t5-small   # your images + captions, any T5

Reads top to bottom like nanoGPT's train.py: config -> data -> model -> optimiser -> loop -> sampling ->
report. Everything reusable lives in the `minimagen` package; this script only composes it.
Outputs in --out: samples.png (captions + every stage), metrics.json (alignment per attribute and stage,
losses, timings), checkpoints/step-*/ (resumable) and final/ (Cascade.from_pretrained).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import torch

from minimagen.run_presets import RUN_PRESETS, build_cascade_config, prompt_sets
from minimagen.cascade import Cascade
from minimagen.data.prepare import prepare_training_data
from minimagen.report import save_sample_grid, score_samples
from minimagen.training import NonFiniteLossError, TrainConfig, Trainer, latest_checkpoint, step_generator

# ----------------------------------------------------------------------------- config
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--preset", default="default", choices=sorted(RUN_PRESETS), help="run size (see minimagen/run_presets.py)")
parser.add_argument("--stages", type=int, default=None, help="train/sample only the first N stages")
parser.add_argument("--steps", type=int, nargs="+", default=None, help="optimizer steps per stage (one value or one per stage)")
parser.add_argument("--batch-size", type=int, default=None, help="images per optimizer step")
parser.add_argument("--text-encoder", default=None, help="all-MiniLM-L6-v2 (offline default), t5-small, ..., or a local T5 directory")
parser.add_argument("--data", default=None, help="folder of images with captions (default: the built-in captioned shapes)")
parser.add_argument("--out", default="runs/shapes", help="output directory")
parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
parser.add_argument("--seed", type=int, default=0, help="seeds data, initialisation and every training step")
parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
parser.add_argument("--eval-every", type=int, default=0, help="score the base stage every N steps (alignment curve)")
parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
args = parser.parse_args()

preset = RUN_PRESETS[args.preset].replace(stages=args.stages, steps=args.steps, batch_size=args.batch_size,
                                          text_encoder=args.text_encoder)
device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(args.seed)
t_start = time.time()
timings: dict[str, float] = {}
print(f"minimagen train_small: preset {args.preset!r}, device {device}, stages {preset.sizes}, out {out}")

# ----------------------------------------------------------------------------- data
# Images pre-rendered at every stage's size; captions encoded ONCE through the on-disk embedding cache, so
# the text encoder never runs inside the training loop and is freed before training.
t0 = time.time()
data = prepare_training_data(preset, data_dir=args.data, seed=args.seed, cache_dir=out / "embedding_cache",
                             progress=not args.no_progress)
timings["data_s"] = time.time() - t0
print(f"data: {len(data)} items, {data.num_captions} distinct captions, text {data.embed_dim}-d "
      f"({timings['data_s']:.0f} s)")

# ----------------------------------------------------------------------------- model
cascade = Cascade(build_cascade_config(preset, text_embed_dim=data.embed_dim)).to(device)
for i, unet in enumerate(cascade.unets):
    print(f"stage {i}: {preset.sizes[i]}x{preset.sizes[i]}, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params")

# ----------------------------------------------------------------------------- optimiser
trainer = Trainer(cascade, TrainConfig(learning_rate=preset.learning_rate, warmup_steps=preset.warmup_steps,
                                       ema_decay=preset.ema_decay, seed=args.seed))
ckpt_root = out / "checkpoints"
if args.resume:
    last = latest_checkpoint(ckpt_root)
    if last is None:
        sys.exit(f"--resume: no checkpoint in {ckpt_root}; run without --resume to start a new run")
    trainer.load_checkpoint(last)
    print(f"resumed from {last} (steps per stage {trainer.steps})")

interrupted = False


def _on_sigint(signum, frame):  # Ctrl-C: finish the current step, save, exit cleanly
    global interrupted
    interrupted = True


signal.signal(signal.SIGINT, _on_sigint)

# ----------------------------------------------------------------------------- training loop
from tqdm.auto import tqdm  # noqa: E402

losses: dict[str, list[float]] = json.loads((out / "losses.json").read_text()) if args.resume and (out / "losses.json").exists() else {}
curve: list[dict] = []
for stage in range(len(preset.sizes)):
    stage_losses = losses.setdefault(str(stage), [])
    t0 = time.time()
    bar = tqdm(total=preset.steps[stage], initial=trainer.steps[stage], desc=f"stage {stage} ({preset.sizes[stage]}px)",
               disable=args.no_progress, dynamic_ncols=True)
    while trainer.steps[stage] < preset.steps[stage] and not interrupted:
        step = trainer.steps[stage]
        idx = torch.randint(0, len(data), (preset.batch_size,), generator=step_generator(args.seed, stage, step, 999))
        images, embeds, mask = data.batch(stage, idx, device)
        try:
            loss = trainer.train_step(stage, images, embeds, mask)
        except NonFiniteLossError as err:
            last = latest_checkpoint(ckpt_root)
            sys.exit(f"{err}\nLast good checkpoint: {last or 'none yet'} (resume with --resume).")
        stage_losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{sum(stage_losses[-50:]) / len(stage_losses[-50:]):.4f}")
        if preset.checkpoint_every and trainer.steps[stage] % preset.checkpoint_every == 0:
            trainer.save_checkpoint(ckpt_root)
            (out / "losses.json").write_text(json.dumps(losses))
        if stage == 0 and args.eval_every and trainer.steps[0] % args.eval_every == 0:
            point = score_samples(cascade, prompt_sets(preset)["single_heldout"], preset, num_stages=1, seed=args.seed)
            curve.append({"minutes": (time.time() - t_start) / 60, "step": trainer.steps[0], **point["all"]})
            bar.write(f"step {trainer.steps[0]}: base-stage alignment {point['all']}")
    bar.close()
    timings[f"train_stage{stage}_s"] = time.time() - t0
    if interrupted:
        path = trainer.save_checkpoint(ckpt_root)
        (out / "losses.json").write_text(json.dumps(losses))
        print(f"\ninterrupted: saved {path}; continue with: python train_small.py --out {out} --resume "
              f"--preset {args.preset}")
        sys.exit(130)

trainer.save_checkpoint(ckpt_root)
(out / "losses.json").write_text(json.dumps(losses))
cascade.save_pretrained(out / "final")

# ----------------------------------------------------------------------------- sampling
t0 = time.time()
prompts = prompt_sets(preset)
results = {name: score_samples(cascade, items, preset, seed=args.seed, keep_images=True) for name, items in prompts.items()}
timings["sample_s"] = time.time() - t0
save_sample_grid(results, out / "samples.png", sizes=preset.sizes)

# ----------------------------------------------------------------------------- report
timings["total_s"] = time.time() - t_start
metrics = {
    "preset": args.preset, "device": str(device), "sizes": list(preset.sizes), "steps": trainer.steps,
    "alignment": {name: r["by_stage"] for name, r in results.items()},
    "loss_last100": {s: sum(v[-100:]) / max(len(v[-100:]), 1) for s, v in losses.items()},
    "loss_first100": {s: sum(v[:100]) / max(len(v[:100]), 1) for s, v in losses.items()},
    "alignment_curve": curve, "timings": timings,
}
(out / "metrics.json").write_text(json.dumps(metrics, indent=2))
final = len(preset.sizes) - 1
print(f"\ndone in {timings['total_s'] / 60:.1f} min -> {out / 'samples.png'}, {out / 'metrics.json'}")
for name, r in results.items():
    a = r["by_stage"][final]
    keys = ("color", "shape", "size", "position", "relation", "all_correct")
    print(f"  {name:15s} final {preset.sizes[final]}px: " + ", ".join(f"{k} {a[k]:.0%}" for k in keys if a[k] == a[k]))
