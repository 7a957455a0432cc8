"""Samplers' quality against network evaluations (NFE) and the cascade's sampling speed, measured.

    python -m minimagen.tools.sampler_tradeoff --cascade checkpoints/shapes [--prompts 48] [--seeds 2]
        [--out results/sampler_tradeoff.json] [--quick] [--parts base,sr,cascade,speed] [--fast SETTING ...]

Parts (each appends to the JSON at --out as its numbers come; a re-run with the same --out and --key keeps the
points already measured and adds the new ones):
  base     the base stage alone (the preset's guidance and thresholding), every sampler of --samplers at every
           NFE budget of --nfe (steps_for_nfe: Heun's n steps cost 2n - 1). Same prompts and seeds (x_T) for all.
  sr       each super-resolution stage alone, every sampler and NFE, fed the SAME low-res images: the preset's
           own chain on the stages before. Stages of >= 64 px cost ~16x a 32-px one on a CPU, so they use
           --big-prompts prompts (one seed) and --big-nfe.
  cascade  the whole cascade with the preset's setting and each --fast setting, scored on its last stage.
  speed    seconds for ONE prompt (--repeats rounds) and for --speed-batch prompts (--batch-repeats) through the
           whole cascade, text encoding included, settings alternating after a warm-up round: on a shared
           machine compare medians, the per-round ratios and median_cpu_s (this process's CPU time ~ an idle
           machine's wall time with 1 thread), which other jobs affect much less.
A setting is one "sampler:steps" per stage, comma-separated, e.g. "dpmpp_2m_karras:15,dpmpp_2m:5,dpmpp_2m:5".

Scores. alignment: the domain's scorer (data/domains.py): "all_correct" (every attribute of every object right;
mean over seeds, spread = half their range, alignment_se = sqrt(p (1 - p) / n)) and per-attribute accuracies.
fd: Frechet distance on the domain's feature net (data/fidelity.py) between a point's images and as many real
renders at the stage's size; FD is biased by about c / n, so every entry carries fd_real, the FD of two real
sets of the same n and size (fd_real_spread over --fd-real-draws draws).

Map: steps_for_nfe, parse_setting, preset_setting, evaluation_prompts -> Scorer -> sample -> measure_* -> main.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..samplers import nfe
from ..diffusion import SAMPLERS
from .run_presets import RUN_PRESETS

NFE_POINTS = (5, 10, 15, 25, 50, 100)                            # the NFE budgets of the trade-off curves
TRADEOFF_SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler", "heun")
BIG_STAGE_SIZE = 64                                              # stages this large use --big-prompts / --big-nfe
VARIED = ("sampler", "num_inference_steps")                      # what this tool varies; the rest is the preset's


def steps_for_nfe(sampler: str, budget: int) -> int:
    """The most steps whose NFE is <= budget: budget for one-evaluation-per-step samplers, (budget + 1) // 2
    for Heun (n steps cost 2n - 1)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"the NFE budget must be an int >= 1, got {budget!r}")
    steps = (budget + 1) // 2 if sampler == "heun" else budget
    nfe(sampler, steps)  # raises ValueError naming the samplers for an unknown name
    return steps


def parse_setting(text: str, num_stages: int) -> tuple[list[str], list[int]]:
    """ "ddim:50,dpmpp_2m:5" -> (["ddim", "dpmpp_2m"], [50, 5]); exactly one sampler:steps per stage."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != num_stages:
        raise ValueError(f"setting {text!r} has {len(parts)} entries but the cascade has {num_stages} stages; "
                         f"give one sampler:steps per stage, e.g. " + ",".join(["ddim:20"] * num_stages))
    samplers, steps = [], []
    for p in parts:
        name, _, n = p.partition(":")
        if name not in SAMPLERS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"setting entry {p!r} must be sampler:steps with sampler in {SAMPLERS} and steps >= 1")
        samplers.append(name)
        steps.append(int(n))
    return samplers, steps


def preset_setting(preset, num_stages: int) -> str:
    """The preset's own sampler:steps per stage (DDIM where the preset names no sampler)."""
    samplers = getattr(preset, "sampler", ("ddim",) * num_stages)
    return ",".join(f"{s}:{n}" for s, n in zip(samplers[:num_stages], preset.num_inference_steps[:num_stages]))


def evaluation_prompts(domain, n: int) -> list:
    """n (caption, spec) pairs, split as evenly as possible over the domain's prompt kinds (fixed_prompts)."""
    if n < 1:
        raise ValueError(f"--prompts must be >= 1, got {n}")
    kinds = domain.prompt_kinds
    counts = [n // len(kinds) + (i < n % len(kinds)) for i in range(len(kinds))]
    return [item for kind, c in zip(kinds, counts) if c for item in domain.fixed_prompts(kind, c, seed=0)]


class Scorer:
    """Alignment (the domain's scorer) and FD (the domain's feature net) of one point's images."""

    def __init__(self, domain, fd_real_draws: int = 3):
        from ..data import fidelity
        self.domain, self.fid, self.draws, self._real = domain, fidelity, fd_real_draws, {}
        try:
            self.extractor = fidelity.shipped_extractor(domain.name)
        except (FileNotFoundError, OSError, ValueError) as err:  # no feature net for this domain: FD not measured
            self.extractor, self.fd_missing = None, f"no feature net for domain {domain.name!r}: {err}"

    def real(self, n: int, size: int) -> dict:
        """Features of n real renders at `size` (seed 0) and FD of further real sets against them (seeds 1..)."""
        if (n, size) not in self._real:
            ref = lambda seed: self.extractor.features(self.fid.reference_images(self.domain.name, n, size, seed))
            feats = ref(0)
            fds = [self.fid.frechet_distance(feats, ref(seed)) for seed in range(1, 1 + self.draws)]
            self._real[(n, size)] = dict(feats=feats, fd_real=float(np.mean(fds)), fd_real_spread=float(np.std(fds)))
        return self._real[(n, size)]

    def __call__(self, per_seed: list[torch.Tensor], specs: list) -> dict:
        scores = [self.domain.score_alignment(images, specs) for images in per_seed]
        allc = [s["all_correct"] for s in scores]
        p, n = float(np.mean(allc)), len(allc) * len(specs)
        out = {"alignment": p, "alignment_spread": (max(allc) - min(allc)) / 2, "alignment_per_seed": allc,
               "alignment_se": float(np.sqrt(p * (1 - p) / n)), "n_images": n,
               "attributes": {k: float(np.nanmean([s[k] for s in scores])) for k, v in scores[0].items()
                              if k not in ("all_correct", "n", "n_objects", "n_relations") and v == v}}
        if self.extractor is None:
            return {**out, "fd": None, "fd_note": self.fd_missing}
        images = torch.cat(per_seed)
        real = self.real(n, images.shape[-1])
        out.update(fd=self.fid.frechet_distance(self.extractor.features(images), real["feats"]),
                   fd_real=real["fd_real"], fd_real_spread=real["fd_real_spread"])
        return out


@torch.no_grad()
def sample(cascade, text, preset_kwargs: dict, stages: range, samplers, steps, seed: int, lowres=None):
    """Images [B, 3, H, W] in [0, 1] of stages [stages.start, stages.stop) with the preset's guidance and
    thresholding and the given sampler/steps per stage; seed fixes x_T and the augmentation noise."""
    kw = {k: v[stages.start:stages.stop] for k, v in preset_kwargs.items() if k not in VARIED}
    out = cascade(text_embeds=text[0], text_mask=text[1], start_stage=stages.start, num_stages=stages.stop,
                  lowres_images=lowres, sampler=list(samplers), num_inference_steps=list(steps), output_type="pt",
                  generator=torch.Generator().manual_seed(seed), progress=False, **kw)
    return out.images


def _points(samplers, budgets):  # (sampler, steps) per sampler and NFE budget, without repeats
    return list(dict.fromkeys((s, steps_for_nfe(s, b)) for s in samplers for b in budgets))


def measure_base_and_sr(cascade, preset, items, args, scorer, results: dict, save, parts, bar) -> None:
    """Parts "base" and "sr": one entry per (stage, sampler, NFE) in results["stages"][str(stage)]."""
    kwargs = preset.sampling_kwargs(cascade.num_stages)
    default = parse_setting(preset_setting(preset, cascade.num_stages), cascade.num_stages)
    specs = [spec for _, spec in items]
    text = cascade.encode_text([c for c, _ in items])
    chain = {}  # seed -> default-chain images of every stage (the SR stages' fixed inputs)
    for stage in range(cascade.num_stages):
        if ("base" if stage == 0 else "sr") not in parts:
            continue
        big = cascade.config.stages[stage].image_size >= BIG_STAGE_SIZE
        k = min(args.big_prompts, len(items)) if big else len(items)
        rows = [i * len(items) // k for i in range(k)]  # spread over the prompt kinds
        use_seeds = [0] if big else list(range(args.seeds))
        entries = results["stages"].setdefault(str(stage), [])
        done = {(e["sampler"], e["steps"], e["prompts"], e["seeds"]) for e in entries}  # resume: kept, skipped
        for sampler, steps in _points(args.samplers, args.big_nfe if big else args.nfe):
            bar.update(), bar.set_postfix_str(f"stage {stage} {sampler} {nfe(sampler, steps)} NFE")
            if (sampler, steps, k, len(use_seeds)) in done:
                continue
            t0, per_seed = time.perf_counter(), []
            for seed in use_seeds:
                while len(chain.setdefault(seed, [])) < stage:  # the default chain up to stage - 1, all prompts
                    j = len(chain[seed])
                    chain[seed].append(sample(cascade, text, kwargs, range(j, j + 1), default[0][j:j + 1],
                                              default[1][j:j + 1], seed, chain[seed][-1] if j else None))
                lowres = chain[seed][stage - 1][rows] if stage else None
                sub = (text[0][rows], text[1][rows])
                per_seed.append(sample(cascade, sub, kwargs, range(stage, stage + 1), [sampler], [steps], seed, lowres))
            entries.append({"sampler": sampler, "steps": steps, "nfe": nfe(sampler, steps),
                            "image_size": cascade.config.stages[stage].image_size, "prompts": k,
                            "seeds": len(use_seeds), "seconds": round(time.perf_counter() - t0, 2),
                            **scorer(per_seed, [specs[r] for r in rows])})
            save()


def measure_cascade(cascade, preset, items, args, scorer, results: dict, save, settings, bar) -> None:
    """Part "cascade": the whole cascade per setting (name -> (samplers, steps)), scored on its last stage."""
    kwargs, text = preset.sampling_kwargs(cascade.num_stages), cascade.encode_text([c for c, _ in items])
    done = {(e["setting"], e["n_images"]) for e in results["cascade"]}  # resume: kept, skipped
    for name, (samplers, steps) in settings.items():
        if (name, len(items) * args.seeds) in done:
            continue
        t0, per_seed = time.perf_counter(), [sample(cascade, text, kwargs, range(cascade.num_stages), samplers, steps,
                                                    seed) for seed in range(args.seeds)]
        results["cascade"].append({"setting": name, "samplers": samplers, "steps": steps, "nfe": list(map(nfe, samplers,
                                   steps)), "seconds": round(time.perf_counter() - t0, 2),
                                   **scorer(per_seed, [spec for _, spec in items])})
        bar.update()
        save()


def measure_speed(cascade, preset, items, args, results: dict, save, settings, bar) -> None:
    """Part "speed": seconds per call of cascade(prompts) (text encoding included), settings alternating."""
    kwargs = {k: v for k, v in preset.sampling_kwargs(cascade.num_stages).items() if k not in VARIED}
    for batch, repeats in ((1, args.repeats), (args.speed_batch, args.batch_repeats)):
        prompts = [items[i % len(items)][0] for i in range(batch)]
        run = lambda s: cascade(prompts, sampler=s[0], num_inference_steps=s[1], output_type="pt", progress=False,
                                generator=torch.Generator().manual_seed(0), **kwargs)
        times, cpu = {name: [] for name in settings}, {name: [] for name in settings}
        for r in range(repeats + 1):  # round 0 is the warm-up, not recorded
            for name, setting in settings.items():
                t0, c0 = time.perf_counter(), time.process_time()
                run(setting)
                if r:
                    times[name].append(time.perf_counter() - t0), cpu[name].append(time.process_time() - c0)
            bar.update()
        results["speed"][f"batch_{batch}"] = {
            name: {"median_s": statistics.median(t), "median_s_per_prompt": statistics.median(t) / batch,
                   "min_s": min(t), "times_s": [round(x, 3) for x in t], "median_cpu_s": statistics.median(cpu[name]),
                   "median_ratio_to_preset": statistics.median(a / b for a, b in zip(t, times["preset"]))}
            for name, t in times.items()}
        save()


def main(argv=None, cascade=None) -> dict:
    """The command line; `cascade` (a loaded Cascade) replaces loading --cascade, e.g. in tests."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cascade", required=True, help="directory of Cascade.save_pretrained")
    ap.add_argument("--preset", help="RUN_PRESETS name: guidance, thresholding, steps, domain (default: 'default')")
    ap.add_argument("--prompts", type=int, default=48, help="split evenly over the domain's prompt kinds")
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0 .. N-1 (x_T and augmentation noise)")
    ap.add_argument("--out", default="results/sampler_tradeoff.json")
    ap.add_argument("--key", default=None, help="name of this run in the JSON (default: the cascade directory)")
    ap.add_argument("--parts", default="base,sr,cascade,speed")
    ap.add_argument("--samplers", default=",".join(TRADEOFF_SAMPLERS))
    ap.add_argument("--nfe", default=",".join(map(str, NFE_POINTS)))
    ap.add_argument("--big-prompts", type=int, default=16)
    ap.add_argument("--big-nfe", default="5,10,20")
    ap.add_argument("--fast", action="append", default=[], help="a setting to compare with the preset's (repeatable)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds for one prompt")
    ap.add_argument("--batch-repeats", type=int, default=3, help="timed rounds for --speed-batch prompts")
    ap.add_argument("--speed-batch", type=int, default=16)
    ap.add_argument("--fd-real-draws", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="4 prompts, 1 seed, 2 samplers at 5 and 10 NFE, 1 repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.seeds, args.samplers, args.nfe = 4, 1, "ddim,dpmpp_2m_karras", "5,10"
        args.big_prompts, args.big_nfe, args.repeats, args.batch_repeats, args.speed_batch = 2, "5", 1, 1, 2
        args.fd_real_draws = 1
    parts = [p for p in args.parts.split(",") if p]
    bad = set(parts) - {"base", "sr", "cascade", "speed"}
    if bad or min(args.seeds, args.repeats, args.batch_repeats, args.big_prompts, args.speed_batch) < 1:
        raise SystemExit(f"--parts takes base,sr,cascade,speed (got {sorted(bad)}); --seeds, --repeats, "
                         f"--batch-repeats, --big-prompts and --speed-batch must be >= 1")
    args.samplers = [s.strip() for s in args.samplers.split(",")]
    args.nfe, args.big_nfe = ([int(x) for x in v.split(",")] for v in (args.nfe, args.big_nfe))
    if set(args.samplers) - set(SAMPLERS) or min(args.nfe + args.big_nfe) < 1:
        raise SystemExit(f"--samplers takes names from {SAMPLERS} (got {args.samplers}); --nfe and --big-nfe take "
                         f"NFE budgets >= 1 (got {args.nfe}, {args.big_nfe})")
    return run(args, parts, cascade)


def run(args, parts, cascade=None) -> dict:
    from tqdm.auto import tqdm
    from ..cascade import Cascade
    from ..data.domains import load_domain
    torch.set_num_threads(1)  # the machine is shared; speed numbers are per thread
    cascade = (cascade or Cascade.from_pretrained(args.cascade)).eval()
    if (name := args.preset or "default") not in RUN_PRESETS:
        raise SystemExit(f"--preset {name!r} is not one of {sorted(RUN_PRESETS)}")
    preset = RUN_PRESETS[name]
    if len(preset.sizes) < cascade.num_stages:
        raise SystemExit(f"preset {name!r} describes {len(preset.sizes)} stages, the cascade has {cascade.num_stages}")
    domain = load_domain(preset.domain)
    items = evaluation_prompts(domain, args.prompts)
    named = {"preset": preset_setting(preset, cascade.num_stages), **{s: s for s in args.fast}}  # name -> setting
    settings = {k: parse_setting(v, cascade.num_stages) for k, v in named.items()}
    out = Path(args.out)
    everything = json.loads(out.read_text()) if out.exists() else {}
    results = everything.setdefault(args.key or str(args.cascade), {})
    kw = {k: v for k, v in preset.sampling_kwargs(cascade.num_stages).items() if k not in VARIED}
    results.update(last_run={"cascade": str(args.cascade), "preset": name, "domain": domain.name, **kw,
                             "prompts": len(items), "seeds": args.seeds, "preset_setting": named["preset"],
                             "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    results.setdefault("stages", {}), results.setdefault("cascade", []), results.setdefault("speed", {})

    def save():
        out.parent.mkdir(parents=True, exist_ok=True), out.write_text(json.dumps(everything, indent=1) + "\n")

    scorer = Scorer(domain, args.fd_real_draws)
    big = [cascade.config.stages[s].image_size >= BIG_STAGE_SIZE for s in range(cascade.num_stages)]
    total = sum(len(_points(args.samplers, args.big_nfe if big[s] else args.nfe)) for s in range(cascade.num_stages)
                if ("base" if s == 0 else "sr") in parts)
    total += len(settings) * ("cascade" in parts) + (args.repeats + args.batch_repeats + 2) * ("speed" in parts)
    with tqdm(total=total, desc="sampler_tradeoff") as bar:
        if "base" in parts or "sr" in parts:
            measure_base_and_sr(cascade, preset, items, args, scorer, results, save, parts, bar)
        if "cascade" in parts:
            measure_cascade(cascade, preset, items, args, scorer, results, save, settings, bar)
        if "speed" in parts:
            measure_speed(cascade, preset, items, args, results, save, settings, bar)
    save()
    return results


if __name__ == "__main__":
    main()
