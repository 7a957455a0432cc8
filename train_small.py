"""Train a small Imagen cascade end to end, then sample it and score how well it follows its captions.

    python train_small.py                       # default: 3 stages on the built-in captioned shapes, CPU ok
    python train_small.py --preset ci           # < 2 minutes: the smoke test CI runs
    python train_small.py --preset gpu          # the paper's 64 -> 256 -> 1024 shape, scaled to one ~24 GB GPU
    python train_small.py --out runs/x --resume # continue an interrupted run (Ctrl-C saves a checkpoint)
    python train_small.py --data my_folder --text-encoder t5-small   # your images + captions, any T5
    torchrun --nproc_per_node 4 train_small.py --preset gpu     # 4 GPUs (DDP; see README "Training on GPUs")

Reads top to bottom like nanoGPT's train.py: config -> data -> model -> optimiser -> loop -> sampling ->
report. Everything reusable lives in the `minimagen` package; this script only composes it.
Outputs in --out: samples.png (captions + every stage), metrics.json (alignment per attribute and stage,
losses, timings), checkpoints/step-*/ (resumable) and final/ (Cascade.from_pretrained).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from minimagen import distributed
from minimagen.cascade import Cascade
from minimagen.checkpoint import (CheckpointError, latest_checkpoint, read_cascade_config, step_checkpoints,
                                  write_json_atomic)
from minimagen.data.prepare import image_bytes, prepare_training_data
from minimagen.tools.report import json_safe, sample_captions, save_sample_grid, score_samples
from minimagen.tools.run_presets import RUN_PRESETS, build_cascade_config, prompt_sets
from minimagen.training import MIXED_PRECISION, NonFiniteLossError, TrainConfig, Trainer, autocast_dtype

# ----------------------------------------------------------------------------- config
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--preset", default="default", choices=sorted(RUN_PRESETS), help="run size (see minimagen/tools/run_presets.py)")
parser.add_argument("--stages", type=int, default=None, help="train/sample only the first N stages")
parser.add_argument("--steps", type=int, nargs="+", default=None, help="optimizer steps per stage (one value or one per stage)")
parser.add_argument("--batch-size", type=int, default=None, help="images per optimizer step")
parser.add_argument("--text-encoder", default=None, help="all-MiniLM-L6-v2 (offline default), t5-small, ..., or a local T5 directory")
parser.add_argument("--max-length", type=int, default=None, help="caption tokens kept (default: the preset's; "
                    "byte-level encoders such as tiny-t5 need ~128)")
parser.add_argument("--data", default=None, help="folder of images with captions (default: the built-in captioned shapes)")
parser.add_argument("--out", default="runs/shapes", help="output directory")
parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available; under "
                    "torchrun each process takes cuda:LOCAL_RANK)")
parser.add_argument("--mixed-precision", default="auto", choices=MIXED_PRECISION, help="GPU autocast: auto = bf16 "
                    "where supported else fp16 with a grad scaler; no = fp32. CPU always trains in fp32")
parser.add_argument("--compile", action="store_true", help="torch.compile the U-Nets for training (GPU; the first "
                    "steps take minutes to compile)")
parser.add_argument("--no-tf32", action="store_true", help="GPU: keep fp32 matmuls/convs in full fp32 (default: TF32)")
parser.add_argument("--seed", type=int, default=0, help="seeds data, initialisation and every training step")
parser.add_argument("--cache-dir", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                        "minimagen", "embeddings"),
                    help="caption-embedding cache shared by runs (default: ~/.cache/minimagen/embeddings)")
parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
parser.add_argument("--eval-every", type=int, default=0, help="score the base stage every N steps (alignment curve)")
parser.add_argument("--learning-rate", type=float, default=None, help="AdamW peak learning rate (default: the "
                    "preset's); a lower one can rescue a run that stopped on a NaN loss (with --resume)")
parser.add_argument("--noise-aug-max", type=int, default=None, help="SR stages: train with noise conditioning "
                    "augmentation levels drawn from [0, N) of 1000 (default: the preset's 500; 1 = no augmentation)")
parser.add_argument("--sample-noise-level", type=int, default=None, help="SR stages: augmentation level at sampling "
                    "(default: the preset's 100; 0 = clean low-res input)")
parser.add_argument("--min-snr-gamma", type=float, default=None, help="min-SNR-gamma loss weighting "
                    "(Hang et al. 2023 use 5; default: the preset's, plain MSE)")
parser.add_argument("--checkpoint-every", type=int, default=None, help="save a resumable checkpoint every N steps "
                    "(default: the preset's; 0 = only at the end and on Ctrl-C)")
parser.add_argument("--grad-accum-steps", type=int, default=None, help="split each rank's batch into this many "
                    "micro-batches (less GPU memory, same step; default: the preset's)")
parser.add_argument("--image-store", default=None, help="folder for file-backed pre-rendered images (default: "
                    "OUT/images when the images exceed 4 GiB or under torchrun, else in RAM); on several machines "
                    "give a node-local disk")
parser.add_argument("--prepare-only", action="store_true", help="render the images and encode every caption into "
                    "the cache, then exit (do this once before a torchrun job on a large caption set)")
parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; on a "
                    "busy 2-core machine --threads 1 is often faster)")
args = parser.parse_args()
sys.stdout.reconfigure(line_buffering=True)  # progress lines appear at once even when redirected to a file


def check_arguments() -> None:
    """Argument errors end the run like argparse's own (one line, exit status 2), before any work is done."""
    for name in ("checkpoint_every", "eval_every", "grad_accum_steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < (1 if name in ("grad_accum_steps", "threads") else 0):
            parser.error(f"--{name.replace('_', '-')} must be >= {1 if name in ('grad_accum_steps', 'threads') else 0}, got {value}")
    if args.min_snr_gamma is not None and not (math.isfinite(args.min_snr_gamma) and args.min_snr_gamma > 0):
        parser.error(f"--min-snr-gamma must be a number > 0 (Hang et al. use 5), got {args.min_snr_gamma}")
    if args.noise_aug_max is not None and not 1 <= args.noise_aug_max <= 1000:
        parser.error(f"--noise-aug-max must lie in [1, 1000] (1 = no augmentation), got {args.noise_aug_max}")
    if args.sample_noise_level is not None and not 0 <= args.sample_noise_level <= 999:
        parser.error(f"--sample-noise-level must lie in [0, 999], got {args.sample_noise_level}")
    if args.learning_rate is not None and not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        parser.error(f"--learning-rate must be a number > 0, got {args.learning_rate}")
    if args.steps is not None and min(args.steps) < 1 and not args.resume:
        parser.error(f"--steps {' '.join(map(str, args.steps))}: every stage needs >= 1 step (0 steps would sample an "
                     "untrained cascade); to sample a trained run again, pass --resume with its --out")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file; give a directory (it is created if missing)")
    if args.data is not None and not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such folder (give a folder of images with captions, see README)")


check_arguments()
try:
    preset = RUN_PRESETS[args.preset].with_overrides(stages=args.stages, steps=args.steps, batch_size=args.batch_size,
                                                     text_encoder=args.text_encoder, max_length=args.max_length)
except ValueError as err:
    parser.error(str(err))
if args.learning_rate is not None:
    preset = dataclasses.replace(preset, learning_rate=args.learning_rate)  # validated by TrainConfig below
if args.checkpoint_every is not None:
    preset = dataclasses.replace(preset, checkpoint_every=args.checkpoint_every)
if args.min_snr_gamma is not None:
    preset = dataclasses.replace(preset, min_snr_gamma=args.min_snr_gamma)
if args.noise_aug_max is not None:
    preset = dataclasses.replace(preset, train_noise_level_max=args.noise_aug_max)
if args.sample_noise_level is not None:
    preset = dataclasses.replace(preset, sample_noise_level=args.sample_noise_level)
try:
    dist = distributed.init_distributed(args.device)  # one process, or this rank of a torchrun job
    autocast_dtype(args.mixed_precision, dist.device)  # settings that cannot work here fail now, not after the data
except ValueError as err:
    parser.error(f"--device / --mixed-precision: {err}")
device = dist.device
if not dist.is_main:  # rank 0 prints, shows progress and writes every file
    sys.stdout = open(os.devnull, "w")
    args.no_progress = True
if preset.batch_size % dist.world_size:
    parser.error(f"--batch-size {preset.batch_size} is the global batch: it must be divisible by the "
                 f"{dist.world_size} processes (e.g. {preset.batch_size // dist.world_size * dist.world_size or dist.world_size})")
if args.preset == "gpu" and device.type != "cuda":
    parser.error("--preset gpu needs a CUDA GPU (~20 GB, see `python -m minimagen.tools.memory`); on a CPU use the "
                 "default preset (about 20 minutes) or --preset ci")
out, ckpt_root = Path(args.out), Path(args.out) / "checkpoints"


def check_resume() -> Path | None:
    """--resume: find the checkpoint and compare its stages with this run's now, not after the data is prepared."""
    if not args.resume:
        return None
    last = latest_checkpoint(ckpt_root)
    if last is None:
        parser.error(f"--resume: no checkpoint in {ckpt_root}; run without --resume to start a new run")
    try:
        stored = read_cascade_config(last / "cascade")
    except CheckpointError as err:
        earlier = step_checkpoints(ckpt_root)[:-1]
        hint = (f"; the previous checkpoint {earlier[-1]} may be intact: move {last} away and resume again"
                if earlier else "")
        parser.error(f"--resume: {err}{hint}")
    sizes = [st.get("image_size") for st in stored.get("stages", [])]
    if sizes != list(preset.sizes):
        parser.error(f"--resume: {last} holds a cascade of {len(sizes)} stages at sizes {sizes}, this run has "
                     f"{len(preset.sizes)} at {list(preset.sizes)}: resume with the same --preset and --stages")
    return last


resume_from = check_resume()
ctrl_c = distributed.CtrlC(dist.is_main, dist.world_size)  # from here on Ctrl-C finishes the step, saves, exits
if device.type == "cuda" and not args.no_tf32:
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (~10 bits of mantissa)
    torch.backends.cudnn.allow_tf32 = True
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(args.seed)  # initialisation: the same on every rank
if args.threads:
    torch.set_num_threads(args.threads)
t_start = time.time()
timings: dict[str, float] = {}
print(f"minimagen train_small: preset {args.preset!r}, device {device}, stages {preset.sizes}, out {out}, "
      f"{torch.get_num_threads()} CPU threads"
      + (f", {dist.world_size} processes (global batch {preset.batch_size})" if dist.world_size > 1 else ""))

# ----------------------------------------------------------------------------- data
# Images pre-rendered at every stage's size; captions encoded ONCE through the on-disk embedding cache, so
# the text encoder never runs inside the training loop and is freed before training.
t0 = time.time()
store = args.image_store
if store is None and args.data is None and (dist.world_size > 1 or image_bytes(preset) > 4 * 2 ** 30):
    store = out / "images"
if dist.local_rank != 0:
    distributed.barrier()  # each machine's first rank renders and encodes into the shared folders first ...
data = prepare_training_data(preset, data_dir=args.data, seed=args.seed, cache_dir=args.cache_dir,
                             progress=not args.no_progress, encoder_device=device, image_store=store)
if dist.local_rank == 0:
    distributed.barrier()  # ... then the others map / read what it wrote
timings["data_s"] = time.time() - t0
print(f"data: {len(data)} items, {data.num_captions} distinct captions, text {data.embed_dim}-d "
      f"({timings['data_s']:.0f} s)" + (f"; images in {store}" if store else ""))
if args.prepare_only:
    print(f"--prepare-only: captions cached in {args.cache_dir}; start training with the same arguments")
    distributed.cleanup()
    sys.exit(0)

# ----------------------------------------------------------------------------- model
cascade = Cascade(build_cascade_config(preset, text_embed_dim=data.embed_dim)).to(device)
for i, unet in enumerate(cascade.unets):
    print(f"stage {i}: {preset.sizes[i]}x{preset.sizes[i]}, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M params")

# ----------------------------------------------------------------------------- optimiser
samplers = [distributed.StageSampler(len(data), preset.batch_size, seed=args.seed, stage=s)
            for s in range(len(preset.sizes))]
trainer = Trainer(cascade, TrainConfig(learning_rate=preset.learning_rate, warmup_steps=preset.warmup_steps,
                                       ema_decay=preset.ema_decay, seed=args.seed,
                                       mixed_precision=args.mixed_precision, torch_compile=args.compile,
                                       grad_accum_steps=args.grad_accum_steps or preset.grad_accum_steps))
losses: dict[str, list[float]] = {}
if resume_from is not None:
    try:
        trainer.load_checkpoint(resume_from)
    except CheckpointError as err:  # e.g. other --text-encoder than the run being resumed
        sys.exit(f"--resume: {err}")
    print(f"resumed from {resume_from} (steps per stage {trainer.steps})")
    if (out / "losses.json").exists():  # a kill after saving losses.json but before the checkpoint: cut them back
        losses = {s: v[:trainer.steps[int(s)]] for s, v in json.loads((out / "losses.json").read_text()).items()
                  if int(s) < len(trainer.steps)}


def save_losses() -> None:
    if dist.is_main:
        write_json_atomic(out / "losses.json", losses)


# ----------------------------------------------------------------------------- training loop
curve: list[dict] = []  # base-stage alignment vs training minutes (--eval-every)
eval_s = 0.0
for stage in range(len(preset.sizes)):
    stage_losses = losses.setdefault(str(stage), [])
    t0, first_step = time.time(), trainer.steps[stage]
    bar = tqdm(total=preset.steps[stage], initial=trainer.steps[stage], desc=f"stage {stage} ({preset.sizes[stage]}px)",
               disable=args.no_progress, dynamic_ncols=True)
    while trainer.steps[stage] < preset.steps[stage] and not ctrl_c.requested(device):
        idx = samplers[stage].indices(trainer.steps[stage])  # this rank's rows of the global batch
        images, embeds, mask = data.batch(stage, idx, device)
        try:
            loss = trainer.train_step(stage, images, embeds, mask)
        except NonFiniteLossError as err:
            sys.exit(f"{err}\nLast good checkpoint: {latest_checkpoint(ckpt_root) or 'none yet'} (resume with "
                     f"--resume and, e.g., --learning-rate {trainer.config.learning_rate / 3:.2g}).")
        stage_losses.append(loss)
        if trainer.steps[stage] == first_step + 10:  # the speed, early: a run that will take an hour shows it now
            per_step = (time.time() - t0) / 10
            left = preset.steps[stage] - trainer.steps[stage]
            bar.write(f"stage {stage}: {per_step:.2f} s per step, about {per_step * left / 60:.0f} min for the "
                      f"{left} steps left" + ("" if args.threads else " (on a busy machine try --threads 1)"))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(stage_losses[-50:]) / len(stage_losses[-50:]):.4f}")
        if preset.checkpoint_every and trainer.steps[stage] % preset.checkpoint_every == 0:
            save_losses()  # losses first: on resume they are cut back to the checkpoint's step
            trainer.save_checkpoint(ckpt_root)
        if stage == 0 and args.eval_every and trainer.steps[0] % args.eval_every == 0 and dist.is_main:
            te = time.time()
            point = {name: score_samples(cascade, items, preset, num_stages=1, seed=args.seed)["all"]
                     for name, items in prompt_sets(preset).items()}
            eval_s += time.time() - te
            curve.append({"train_minutes": (time.time() - t0 - eval_s) / 60, "step": trainer.steps[0], **point})
            bar.write(f"step {trainer.steps[0]}: base alignment (all correct) "
                      + ", ".join(f"{k} {v['all_correct']:.0%}" for k, v in point.items()))
    bar.close()
    timings[f"train_stage{stage}_s"] = time.time() - t0 - (eval_s if stage == 0 else 0.0)
    if stage == 0 and eval_s:
        timings["eval_curve_s"] = eval_s
    if ctrl_c.seen:
        save_losses()
        path = trainer.save_checkpoint(ckpt_root)
        same_args = shlex.join(a for a in sys.argv[1:] if a != "--resume")  # same settings, else resume refuses
        launcher = "torchrun ... train_small.py" if dist.world_size > 1 else "python train_small.py"
        print(f"\ninterrupted: saved {path}; continue with: {launcher} {same_args} --resume")
        sys.exit(130)

save_losses()
trainer.save_checkpoint(ckpt_root)
if not dist.is_main:  # the samples, the report and final/ are rank 0's
    distributed.cleanup()
    sys.exit(0)
cascade.save_pretrained(out / "final")
ctrl_c.restore()  # training is saved: Ctrl-C now simply stops sampling
distributed.cleanup()  # rank 0 samples alone

# ----------------------------------------------------------------------------- sampling
t0 = time.time()
if args.data is None:  # built-in data: sample fixed prompt sets and score them against their specs
    results = {name: score_samples(cascade, items, preset, seed=args.seed, keep_images=True)
               for name, items in prompt_sets(preset).items()}
else:  # your own data has no ground truth to score: sample some of its captions to look at
    results = {"your data": sample_captions(cascade, data.text.captions[:8], preset, seed=args.seed)}
timings["sample_s"] = time.time() - t0
save_sample_grid(results, out / "samples.png", sizes=preset.sizes)

# ----------------------------------------------------------------------------- report
timings["total_s"] = time.time() - t_start
metrics = {
    "preset": args.preset, "device": str(device), "sizes": list(preset.sizes), "steps": trainer.steps,
    "alignment": {name: r["by_stage"] for name, r in results.items() if r.get("by_stage")},
    "loss_last100": {s: sum(v[-100:]) / max(len(v[-100:]), 1) for s, v in losses.items()},
    "loss_first100": {s: sum(v[:100]) / max(len(v[:100]), 1) for s, v in losses.items()},
    "alignment_curve": curve, "timings": timings,
}
(out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))  # NaN (nothing to score) -> null
final = len(preset.sizes) - 1
print(f"\ndone in {timings['total_s'] / 60:.1f} min -> {out / 'samples.png'}, {out / 'metrics.json'}")
for name, r in results.items():
    if not r["by_stage"]:
        continue
    a = r["by_stage"][final]
    print(f"  {name:15s} final {preset.sizes[final]}px: " + ", ".join(f"{k} {v:.0%}" for k, v in a.items()
                                                                       if isinstance(v, float) and v == v))
if args.preset == "ci":
    print("  (the ci preset is a smoke test: a few dozen steps cannot learn the captions, so ~0 % is expected here)")
