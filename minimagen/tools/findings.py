"""Imagen in miniature, the runner: train small variants on a fixed CPU budget, check the paper's findings.

    python -m minimagen.tools.findings                       # the full run (BUDGETS["full"]; 2 worker processes)
    python -m minimagen.tools.findings --quick               # every finding on a tiny budget (~1-2 min; CI)
    python -m minimagen.tools.findings --only conditioning --seeds 2 --out runs/findings_conditioning

For every finding of findings_arms.FINDINGS it trains each arm (base stage, or SR stage) once per seed with
the library (prepare_training_data, build_cascade_config, Trainer, report.score_samples), scores it on the
scenes domain's prompt sets with scenes_scoring.score_alignment and the fidelity metric (data/fidelity.py,
when the scenes feature net is installed), and writes OUT/findings.json (mean +- std over seeds per arm and
prompt set, paired differences to the baseline) and OUT/<finding>.png (findings_plots.py).

Caching: every (arm, seed) result is kept in OUT/cache/<key>.json, key = findings_arms.arm_key (the arm's
full RunPreset, seed, scoring settings): a second run re-uses it, a changed arm trains again. The images
are rendered once into OUT/cache/images (memory-mapped, shared by the workers) and the captions encoded
once per text encoder into the embedding cache. Worker processes run 1 thread each.

Map: `Task` -> `train_and_score` (one arm, one seed, in a worker) -> `plan` (steps per arm, equal-minutes
timing) -> `summarise` (findings_summary.py) -> `run_findings` (cache, workers, progress, findings.json) -> `main`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .findings_arms import (ARMS, BASE_SETS, BUDGETS, FINDINGS, SR_SETS, ArmSpec, Budget, arm_key, run_preset)
from .findings_summary import ATTRIBUTES, paired_difference, summarise  # noqa: F401 (re-exported)

DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "minimagen",
                             "embeddings")


@dataclass(frozen=True)
class Task:
    name: str          # ARMS name
    arm: ArmSpec
    seed: int
    steps: int         # optimizer steps of the trained stage
    budget: Budget
    out: str           # OUT directory (images under OUT/cache/images)
    embed_cache: str   # caption-embedding cache directory


# ----------------------------------------------------------------------------- one arm, one seed
_ENCODERS: dict = {}  # per process: text encoders loaded once (name, max_length) -> TextEncoder


def _encoder(name: str, max_length: int):
    from ..text_encoder import load_text_encoder
    if (name, max_length) not in _ENCODERS:
        _ENCODERS[(name, max_length)] = load_text_encoder(name, max_length=max_length)
    return _ENCODERS[(name, max_length)]


def _data(preset, task: Task):
    from ..data.prepare import prepare_training_data
    return prepare_training_data(preset, seed=0, cache_dir=task.embed_cache, progress=False,
                                 image_store=Path(task.out) / "cache" / "images")


def _prompts(kind: str, n: int, index: int) -> list:
    from ..data.domains import load_domain
    return load_domain("scenes").fixed_prompts(kind, n=n, seed=index)


def _renders(items: list, size: int) -> torch.Tensor:
    """Real renders [N, 3, size, size] of the prompts' specs (the fidelity reference; the SR input)."""
    from ..data.scenes_render import render_scene
    return torch.stack([render_scene(spec, size) for _, spec in items])


def fidelity_extractor():
    """The scenes feature net of data/fidelity.py, or (None, why) when it is not installed."""
    try:
        from ..data.fidelity import shipped_extractor
        return shipped_extractor("scenes"), None
    except (ImportError, FileNotFoundError, ValueError, KeyError) as err:
        return None, f"{type(err).__name__}: {err}"


def _frechet(a: torch.Tensor, b: torch.Tensor):
    extractor, _ = fidelity_extractor()
    return None if extractor is None else float(extractor.fidelity(a, b))


def _attribute_mean(scores: dict) -> float:
    return float(np.mean([scores[a] for a in ATTRIBUTES]))


def train_and_score(task: Task) -> dict:
    """Train task.arm's stage for task.steps steps with seed task.seed, then score it. Runs in a worker."""
    torch.set_num_threads(1)
    from ..cascade import Cascade
    from ..distributed import StageSampler
    from ..training import TrainConfig, Trainer
    from .report import score_samples
    from .run_presets import build_cascade_config

    budget, stage = task.budget, 0 if task.arm.stage == "base" else 1
    preset = run_preset(task.arm, budget, task.steps)
    t0 = time.time()
    data = _data(preset, task)
    data_s = time.time() - t0
    torch.manual_seed(task.seed)  # initialisation
    cascade = Cascade(build_cascade_config(preset, text_embed_dim=data.embed_dim))
    trainer = Trainer(cascade, TrainConfig(learning_rate=preset.learning_rate, warmup_steps=preset.warmup_steps,
                                           ema_decay=preset.ema_decay, seed=task.seed))
    sampler = StageSampler(len(data), preset.batch_size, seed=task.seed, stage=stage, rank=0, world_size=1)
    losses, t0 = [], time.time()
    while trainer.steps[stage] < task.steps:
        images, embeds, mask = data.batch(stage, sampler.indices(trainer.steps[stage]), "cpu")
        losses.append(trainer.train_step(stage, images, embeds, mask))
    train_s = time.time() - t0
    cascade.set_text_encoder(_encoder(preset.text_encoder, preset.max_length))
    cascade.eval()

    t0, by_set, samples, reals = time.time(), {}, [], []
    sets = BASE_SETS if stage == 0 else SR_SETS
    for index, kind in enumerate(sets):
        items = _prompts(kind, budget.num_prompts, index)
        if stage == 0:
            result = score_samples(cascade, items, preset, num_stages=1, seed=task.seed, keep_images=True)
            images, scores = result["images"][0], result["all"]
            real = _renders(items, preset.sizes[0])
        else:  # the SR stage alone, on real 16-px renders: what it adds, without the base stage's errors
            from ..data.domains import load_domain
            low, real = _renders(items, preset.sizes[0]), _renders(items, preset.sizes[1])
            with torch.no_grad():
                images = cascade([c for c, _ in items], output_type="pt", start_stage=1, lowres_images=low,
                                 guidance_scale=1.0, thresholding="static", progress=False,
                                 num_inference_steps=budget.sr_sample_steps,
                                 generator=torch.Generator().manual_seed(task.seed)).images
            scores = load_domain("scenes").score_alignment(images, [s for _, s in items])
            scores["mse_to_real"] = float(((images - real) ** 2).mean())
        scores["attributes"] = _attribute_mean(scores)
        by_set[kind] = scores
        samples.append(images)
        reals.append(real)
    samples, reals = torch.cat(samples), torch.cat(reals)
    eval_s = time.time() - t0
    kept = Path(task.out) / "samples" / f"{task.name}-seed{task.seed}-steps{task.steps}.pt"
    kept.parent.mkdir(parents=True, exist_ok=True)  # uint8 samples: fidelity can be computed again later
    torch.save({"samples": (samples.clamp(0, 1) * 255).round().to(torch.uint8), "sets": list(sets)}, kept)
    return {"arm": task.name, "spec": dataclasses.asdict(task.arm), "seed": task.seed, "steps": task.steps,
            "batch_size": preset.batch_size, "by_set": by_set,
            "fidelity": _frechet(samples.clamp(0, 1), reals), "n_fidelity": len(samples),
            "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:])),
            "train_s": train_s, "step_s": train_s / max(task.steps, 1), "eval_s": eval_s, "data_s": data_s,
            "params": sum(p.numel() for p in cascade.unets[stage].parameters())}


# ----------------------------------------------------------------------------- planning
def _trained_unet(arm: ArmSpec, budget: Budget):
    from .run_presets import build_cascade_config
    from ..text_encoder import text_embed_dim
    preset = run_preset(arm, budget)
    return build_cascade_config(preset, text_embed_dim(arm.text_encoder)).stages[0 if arm.stage == "base" else 1].unet


def time_step(arm: ArmSpec, budget: Budget, steps: int) -> float:
    """Seconds per optimizer step of arm's stage at the budget's batch, on random inputs (1 thread)."""
    from ..cascade import Cascade
    from ..training import TrainConfig, Trainer
    from .run_presets import build_cascade_config
    from ..text_encoder import text_embed_dim
    torch.set_num_threads(1)
    preset, stage = run_preset(arm, budget), 0 if arm.stage == "base" else 1
    d = text_embed_dim(arm.text_encoder)
    cascade = Cascade(build_cascade_config(preset, d))
    trainer = Trainer(cascade, TrainConfig(learning_rate=1e-4, warmup_steps=1))
    g, size, b = torch.Generator().manual_seed(0), preset.sizes[stage], preset.batch_size
    images = torch.rand(b, 3, size, size, generator=g)
    embeds, mask = torch.randn(b, 16, d, generator=g), torch.ones(b, 16, dtype=torch.bool)
    trainer.train_step(stage, images, embeds, mask)  # warm-up (allocations)
    t0 = time.time()
    for _ in range(steps):
        trainer.train_step(stage, images, embeds, mask)
    return (time.time() - t0) / steps


def plan(findings: list[str], budget: Budget, timings: dict, timer=time_step) -> dict[str, dict]:
    """{finding: {arm name: steps}}. equal="minutes": an arm whose trained U-Net differs from the baseline's
    gets round(baseline steps * t_baseline / t_arm) steps, t = timer(arm) seconds per step (kept in
    `timings`, keyed by arm name); an arm with the baseline's U-Net gets the baseline's steps."""
    out = {}
    for name in findings:
        f = FINDINGS[name]
        base = ARMS[f.baseline]
        base_steps = budget.base_steps if base.stage == "base" else budget.sr_steps
        steps = {f.baseline: base_steps}
        for arm_name in f.arms:
            arm = ARMS[arm_name]
            if f.equal == "steps" or _trained_unet(arm, budget) == _trained_unet(base, budget):
                steps[arm_name] = base_steps
                continue
            for n in (f.baseline, arm_name):
                if n not in timings:
                    timings[n] = timer(ARMS[n], budget, budget.timing_steps)
            steps[arm_name] = max(1, round(base_steps * timings[f.baseline] / timings[arm_name]))
        out[name] = steps
    return out


def reference_fidelity(budget: Budget) -> dict:
    """FD between real renders of the evaluated prompts and real renders of other prompts of the same kinds,
    at the same n and size as the arms' numbers: the floor the estimator's bias alone gives."""
    extractor, why = fidelity_extractor()
    if extractor is None:
        return {"available": False, "why": why}
    out = {"available": True}
    for stage, sets, size in (("base", BASE_SETS, 16), ("sr", SR_SETS, 64)):
        a = torch.cat([_renders(_prompts(k, budget.num_prompts, i), size) for i, k in enumerate(sets)])
        b = torch.cat([_renders(_prompts(k, budget.num_prompts, i + 100), size) for i, k in enumerate(sets)])
        out[stage] = {"real_vs_real": float(extractor.fidelity(a, b)), "n": len(a), "size": size}
    return out


def training_memory(steps: dict, budget: Budget) -> dict:
    """Per arm: parameters and the activation bytes one training forward saves for backward at the budget's
    batch (tools/memory.activation_bytes, counted on the meta device: nothing is allocated)."""
    from .memory import activation_bytes
    out = {}
    for arm_name in dict.fromkeys(a for plan_steps in steps.values() for a in plan_steps):
        arm = ARMS[arm_name]
        unet = _trained_unet(arm, budget)
        batch = budget.batch_size if arm.stage == "base" else budget.sr_batch_size
        with torch.device("meta"):
            from ..networks.unet import build_unet
            params = sum(p.numel() for p in build_unet(unet).parameters())
        out[arm_name] = {"params": params, "batch": batch,
                         "activation_bytes": activation_bytes(unet, batch=batch, text_len=16)}
    return out


# ----------------------------------------------------------------------------- the run
# the order arms are trained in: the headline finding first (its arms, seed by seed), the wide U-Net last
RUN_ORDER = ("text_encoder", "efficient_unet", "conditioning", "beyond_paper", "encoder_vs_unet")
def run_findings(findings: list[str], budget: Budget, out: str | Path, cache: str | Path, workers: int = 2,
                 embed_cache: str = DEFAULT_CACHE, effects: str | None = None, progress: bool = True,
                 runner=train_and_score, timer=time_step, train: bool = True) -> dict:
    """Train what is not cached, then write OUT/findings.json (rewritten as results come) and the figures.
    train=False: only summarise what the cache holds (arms without results are marked missing)."""
    from tqdm import tqdm
    t_start = time.time()
    out, cache = Path(out), Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    timing_file = cache / "timings.json"
    stored = json.loads(timing_file.read_text()) if timing_file.is_file() else {}

    def cached_timer(arm, b, n):  # step times are measured once per arm and budget, then kept
        key = arm_key(arm, b, seed=-1, steps=0)
        if key not in stored:
            stored[key] = timer(arm, b, n)
            timing_file.write_text(json.dumps(stored, indent=1))
        return stored[key]

    timings: dict = {}
    steps = plan(findings, budget, timings, cached_timer)
    tasks = {}
    for name in findings:
        for arm_name, n in steps[name].items():
            for seed in budget.seeds:
                task = Task(arm_name, ARMS[arm_name], seed, n, budget, str(cache), embed_cache)
                tasks[arm_key(task.arm, budget, seed, n)] = task
    results: dict[str, list[dict]] = {}
    pending = []
    # finding by finding (RUN_ORDER), seed by seed within one: a run cut short holds whole comparisons
    def priority(kv):
        task = kv[1]
        first = next(i for i, n in enumerate(RUN_ORDER) if n in findings and
                     task.name in (FINDINGS[n].baseline, *FINDINGS[n].arms))
        return first, task.seed, list(ARMS).index(task.name)
    for key, task in sorted(tasks.items(), key=priority):
        path = cache / f"{key}.json"
        if path.is_file():
            results.setdefault(task.name, []).append(json.loads(path.read_text()))
        elif train:
            pending.append((key, task))
    missing = len(tasks) - len(pending) - sum(len(r) for r in results.values())  # --no-train: not in the cache
    # render + encode once, here, before the workers read the shared files
    for encoder in dict.fromkeys(t.arm.text_encoder for _, t in pending):
        task = next(t for _, t in pending if t.arm.text_encoder == encoder)
        _data(run_preset(task.arm, budget, task.steps), task)
    extra = {"reference_fidelity": reference_fidelity(budget), "memory": training_memory(steps, budget)}

    previous = json.loads((out / "findings.json").read_text()).get("run", {}) if (out / "findings.json").is_file() else {}
    # the wall time of the invocation that trained (a --no-train re-summary keeps it, under "training_run")
    training_run = previous if previous.get("trained") else previous.get("training_run")

    def write() -> dict:
        from .report import json_safe
        summary = summarise(results, steps, budget, timings, effects, extra)
        used = [r for rs in results.values() for r in rs]
        summary["run"] = {"complete": len(used) == len(tasks), "cached": len(tasks) - len(pending) - missing,
                          "results": len(used), "of": len(tasks),
                          "work_s": sum(r["data_s"] + r["train_s"] + r["eval_s"] for r in used),
                          "trained": finished[0], "wall_s": time.time() - t_start, "workers": workers,
                          "command": " ".join(["python -m minimagen.tools.findings", *sys.argv[1:]])}
        if not finished[0] and training_run:
            summary["run"]["training_run"] = {k: v for k, v in training_run.items() if k != "training_run"}
        (out / "findings.json").write_text(json.dumps(json_safe(summary), indent=1))
        return summary

    def cost(task):  # estimated seconds of work: steps x step time + sampling
        batch = budget.batch_size if task.arm.stage == "base" else budget.sr_batch_size
        per_step = timings.get(task.name) or 0.015 * batch  # measured, or ~15 ms an image (base, 16 px)
        return task.steps * per_step + (0.3 if budget.num_prompts < 10 else 25.0)

    finished = [0]
    bar = tqdm(total=sum(cost(t) for _, t in pending), unit="s", disable=not progress, mininterval=5,
               desc=f"findings: {len(pending)} trainings ({len(tasks) - len(pending)} cached)",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| est. work {n:.0f}/{total:.0f} s "
                          "[{elapsed} elapsed, ~{remaining} left]")

    def done(key, task, result):
        (cache / f"{key}.json").write_text(json.dumps(result))
        results.setdefault(task.name, []).append(result)
        finished[0] += 1
        bar.update(cost(task))
        write()

    if workers <= 1:
        for key, task in pending:
            done(key, task, runner(task))
    else:
        import multiprocessing
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(runner, task): (key, task) for key, task in pending}
            from concurrent.futures import as_completed
            for future in as_completed(futures):
                done(*futures[future], future.result())
    bar.close()
    summary = write()
    from .findings_plots import plot_findings
    plot_findings(summary, out)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(FINDINGS), help="run only this finding "
                        "(repeatable; default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny budget: every finding in ~1-2 minutes (CI)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the budget's)")
    parser.add_argument("--out", default=None, help="findings.json and figures (default: results/findings, "
                        "or runs/findings_quick with --quick)")
    parser.add_argument("--cache", default=None, help="per-run results and rendered images (default: "
                        "runs/findings_cache[_quick])")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, 1 thread each (default 2)")
    parser.add_argument("--effects", default="results/effects.json", help="finding 4's measurements, if present")
    parser.add_argument("--embed-cache", default=DEFAULT_CACHE, help="caption-embedding cache directory")
    parser.add_argument("--no-train", action="store_true", help="only summarise the cached results (findings.json, "
                        "figures); nothing is trained")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    budget = BUDGETS["quick" if args.quick else "full"]
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error(f"--seeds must be >= 1, got {args.seeds}")
        budget = dataclasses.replace(budget, seeds=tuple(range(args.seeds)))
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    suffix = "_quick" if args.quick else ""
    out = args.out or ("runs/findings_quick" if args.quick else "results/findings")
    summary = run_findings(args.only or list(FINDINGS), budget, out, args.cache or f"runs/findings_cache{suffix}",
                           workers=args.workers, embed_cache=args.embed_cache, effects=args.effects,
                           progress=not args.no_progress, train=not args.no_train)
    print(f"wrote {Path(out) / 'findings.json'} in {summary['run']['wall_s'] / 60:.1f} min")
    for name, f in summary["findings"].items():
        for arm, d in f.get("vs_baseline", {}).items():
            a = d["attributes"]
            print(f"  {name:16s} {arm:14s} vs {f['baseline']:13s}: attributes {a['mean']:+.3f} +- "
                  f"{a['std']:.3f} ({a['verdict']})")


if __name__ == "__main__":
    main()
