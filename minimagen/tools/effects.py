"""Measure the Imagen paper's three sampling / super-resolution effects on a trained scenes cascade.

  guidance       (Imagen §2.3, Fig. 4): sweep the classifier-free guidance weight w of the base stage and
                 measure caption alignment (scenes scorer), fidelity (Frechet distance on the scenes feature
                 net, `data/fidelity.py`) and diversity (feature distance between seeds of one prompt);
  thresholding   (§2.3, Fig. 4c, A.8): the same sweep for none / static / dynamic (p = 0.995, 0.95), plus the
                 fraction of saturated pixels (exactly 0 or 1 after mapping to [0, 1]);
  augmentation   (§2.4, Fig. A.11): the SR stage trained with noise conditioning augmentation vs one trained
                 without (and any further SR arms, e.g. one trained on levels [0, 200)), all fed the SAME
                 base-stage samples; the same arms fed DEGRADED base samples (`degrade_lowres`: fewer base
                 steps, added grain: the cascade errors augmentation is meant to make SR robust to); and a
                 sweep of the sampling augmentation level x guidance weight of the augmented SR stage.

Every number is a mean over seeds with its `spread` = (max - min) / 2 over seeds. FD: samples of all seeds
pooled (n = prompts x seeds) against real renders of as many fresh prompts of the same kinds; quoted beside it
are `fd_real` (two real sets of that n) and `fd_perfect` (the real renders OF THE EVALUATED PROMPTS, each
repeated once per seed: what a perfect sampler would score; scenes captions fix their picture, so it is the
floor). FD is only comparable at the same n and resolution (see fidelity.py).

    python -m minimagen.tools.effects --cascade runs/scenes/final --noaug runs/scenes_noaug/final \
        --sr-arm aug200=runs/scenes_aug200/final

Contents: effect_prompts, saturated_fraction, sample_images, measure_samples, Reference, guidance_sweep,
thresholding_sweep, sr_options, sr_comparison, degrade_lowres, noise_level_sweep, run_effects, main.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import scenes, scenes_scoring
from ..data.fidelity import FeatureExtractor, frechet_distance, pixel_std
from ..sampling import sample_cascade

GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)  # the paper's Fig. 4 sweeps w = 1 ... 10
THRESHOLDINGS = {"none": ("none", 0.95), "static": ("static", 0.95),      # name -> (thresholding, ratio p)
                 "dynamic_0.995": ("dynamic", 0.995), "dynamic_0.95": ("dynamic", 0.95)}  # paper: p = 0.995
NOISE_LEVELS = (0, 50, 100, 200, 300, 500)   # SR sampling augmentation levels (0 ... 0.5 of the schedule)
SR_GUIDANCE = (1.0, 3.0, 5.0)                # SR guidance weights crossed with the levels
ATTRIBUTES = scenes_scoring.ATTRIBUTES + ("relation", "count", "all_correct")
KINDS = ("single", "two")                    # the prompt mix: half one object, half two (binding)


def effect_prompts(n: int, seed: int = 0) -> list[tuple[str, scenes.SceneSpec]]:
    """n (caption, spec) pairs: the first half of kind "single", the rest "two" (n >= 2)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}: pass an int >= 2 (half one-object, half two-object prompts)")
    half = n // 2
    return scenes.fixed_prompts("single", n=half, seed=seed) + scenes.fixed_prompts("two", n=n - half, seed=seed)


def saturated_fraction(images: torch.Tensor, atol: float = 1e-6) -> float:
    """Fraction of values of images in [0, 1] that sit at 0 or at 1 (within atol): the clipped pixels."""
    if images.numel() == 0:
        raise ValueError("images is empty; pass [N, 3, H, W] in [0, 1]")
    return float(((images <= atol) | (images >= 1 - atol)).float().mean())


def _rounded(obj, digits: int = 5):
    """obj with every float rounded (small JSON files)."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def _mean_spread(values) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "spread": float((v.max() - v.min()) / 2)}   # spread: half the range


def sample_images(cascade, captions: list[str], seeds, *, batch_size: int = 48, progress=None,
                  **options) -> torch.Tensor:
    """[S, P, 3, H, W] in [0, 1]: every caption once per seed (batches of batch_size; generator of batch b of
    seed s: manual_seed(1000 s + b)). `options` go to sample_cascade (stages, guidance_scale, lowres_images
    [S, P, 3, h, w] for an SR stage, ...)."""
    seeds = list(seeds)
    if not seeds or not captions:
        raise ValueError("pass at least one seed and one caption")
    lowres = options.pop("lowres_images", None)
    if lowres is not None and tuple(lowres.shape[:2]) != (len(seeds), len(captions)):
        raise ValueError(f"lowres_images must be [S={len(seeds)}, P={len(captions)}, 3, h, w], "
                         f"got {tuple(lowres.shape)}")
    embeds, mask = cascade.encode_text(captions)                                   # once for every seed
    out = []
    for si, seed in enumerate(seeds):
        chunks = []
        for b, lo in enumerate(range(0, len(captions), batch_size)):
            hi = min(lo + batch_size, len(captions))
            extra = {} if lowres is None else {"lowres_images": lowres[si, lo:hi]}
            chunks.append(sample_cascade(cascade, text_embeds=embeds[lo:hi], text_mask=mask[lo:hi],
                                         output_type="pt", progress=False,
                                         generator=torch.Generator().manual_seed(1000 * seed + b),
                                         **extra, **options).images)
            if progress is not None:
                progress.update(hi - lo)
        out.append(torch.cat(chunks))
    return torch.stack(out)                                                        # [S, P, 3, H, W]


@dataclass
class Reference:
    """Real renders at one size for FD: `fresh` (prompts other than the evaluated ones), `fresh_b` (another
    such set: real vs real), `perfect` (the evaluated prompts' own renders, repeated per seed)."""
    fresh: torch.Tensor
    fresh_b: torch.Tensor
    perfect: torch.Tensor

    @classmethod
    def build(cls, specs, num_seeds: int, size: int, seed: int = 0) -> "Reference":
        n = len(specs) * num_seeds
        render = lambda items: torch.stack([scenes.render_scene(s, size) for _, s in items])  # [n, 3, s, s]
        perfect = torch.stack([scenes.render_scene(s, size) for s in specs])
        return cls(render(effect_prompts(n, 1000 + seed)), render(effect_prompts(n, 2000 + seed)),
                   perfect.repeat(num_seeds, 1, 1, 1))


def reference_fds(extractor: FeatureExtractor, ref: Reference) -> dict[str, float]:
    feats = extractor.features(ref.fresh)
    return {"fd_real": frechet_distance(feats, extractor.features(ref.fresh_b)),
            "fd_perfect": frechet_distance(feats, extractor.features(ref.perfect)), "n": ref.fresh.shape[0]}


def measure_samples(images: torch.Tensor, specs, extractor: FeatureExtractor, ref: Reference) -> dict:
    """Metrics of samples [S, P, 3, H, W] for P specs: alignment per attribute and saturated fraction (mean,
    spread over seeds), fd (pooled S*P vs ref.fresh), diversity (feature distance between seeds, needs S >= 2)
    and pixel_std."""
    if images.ndim != 5 or images.shape[1] != len(specs):
        raise ValueError(f"images must be [S, P={len(specs)}, 3, H, W], got {tuple(images.shape)}")
    scores = [scenes_scoring.score_alignment(x, list(specs)) for x in images]
    out = {a: _mean_spread([s[a] for s in scores]) for a in ATTRIBUTES if not np.isnan(scores[0][a])}
    out["saturated"] = _mean_spread([saturated_fraction(x) for x in images])
    out["fd"] = extractor.fidelity(ref.fresh, images.flatten(0, 1))
    if images.shape[0] >= 2:
        per_prompt = images.transpose(0, 1)                                         # [P, S, 3, H, W]
        out["diversity"], out["pixel_std"] = extractor.diversity(per_prompt), pixel_std(per_prompt)
    return out


def guidance_sweep(cascade, prompts, extractor, ref: Reference, *, seeds=(0, 1),
                   guidance_scales=GUIDANCE_SCALES, thresholding: str = "dynamic",
                   dynamic_thresholding_ratio: float = 0.95, num_inference_steps: int = 25, progress=None) -> dict:
    """Base stage only; everything fixed but w. {"guidance_scale": [...], "rows": [measure_samples per w]}."""
    if not guidance_scales:
        raise ValueError("guidance_scales is empty; pass weights such as (1, 3, 5)")
    captions, specs = [c for c, _ in prompts], [s for _, s in prompts]
    rows = []
    for w in guidance_scales:
        images = sample_images(cascade, captions, seeds, num_stages=1, guidance_scale=float(w),
                               num_inference_steps=num_inference_steps, thresholding=thresholding,
                               dynamic_thresholding_ratio=dynamic_thresholding_ratio, progress=progress)
        rows.append(measure_samples(images, specs, extractor, ref))
    return {"guidance_scale": [float(w) for w in guidance_scales], "rows": rows}


def thresholding_sweep(cascade, prompts, extractor, ref: Reference, *, modes=tuple(THRESHOLDINGS),
                       done: dict | None = None, **sweep_kwargs) -> dict:
    """{mode name: guidance_sweep with that thresholding}; `done` holds sweeps already measured (reused)."""
    bad = [m for m in modes if m not in THRESHOLDINGS]
    if bad or not modes:
        raise ValueError(f"modes {list(modes)} must be a non-empty subset of {tuple(THRESHOLDINGS)}")
    out = {}
    for m in modes:
        if done and m in done:
            out[m] = done[m]
            continue
        mode, ratio = THRESHOLDINGS[m]
        out[m] = guidance_sweep(cascade, prompts, extractor, ref, thresholding=mode,
                                dynamic_thresholding_ratio=ratio, **sweep_kwargs)
    return out


def sr_options(cascade, noise_level, guidance_scale, steps) -> dict:
    """sample_cascade options that run only the SR stage (stage 1) at this level, guidance and step count."""
    if cascade.num_stages < 2:
        raise ValueError("the cascade has no super-resolution stage (stage 1); pass a cascade with >= 2 stages")
    return dict(start_stage=1, num_stages=2, noise_level=int(noise_level), guidance_scale=float(guidance_scale),
                num_inference_steps=steps, thresholding="static")


def sr_comparison(cascades: dict, base_images: torch.Tensor, prompts, extractor, ref: Reference, *,
                  seeds=(0, 1), noise_level: int | None = None, guidance_scale: float = 1.0,
                  num_inference_steps: int = 20, progress=None) -> dict:
    """{name: measure_samples of that cascade's SR stage on the same base_images [S, P, 3, h, w]}.
    noise_level None: each cascade's own sample_noise_level."""
    if not cascades:
        raise ValueError("cascades is empty; pass {'aug': cascade, 'noaug': cascade}")
    captions, specs = [c for c, _ in prompts], [s for _, s in prompts]
    out = {}
    for name, c in cascades.items():
        level = c.config.stages[1].sample_noise_level if noise_level is None else noise_level
        images = sample_images(c, captions, seeds, lowres_images=base_images, progress=progress,
                               **sr_options(c, level, guidance_scale, num_inference_steps))
        out[name] = {"noise_level": level, **measure_samples(images, specs, extractor, ref)}
    return out


DEGRADATIONS = ("fewer_steps", "grain")  # the base-sample errors of the robustness comparison (degrade_lowres)


def degrade_lowres(cascade, base_images: torch.Tensor, captions, seeds, *, kind: str, base_steps: int = 4,
                   grain: float = 0.05, seed: int = 123, progress=None) -> torch.Tensor:
    """Base-stage samples [S, P, 3, h, w] in [0, 1] made worse the way a weaker base model would make them:
    kind "fewer_steps" samples the base stage again with only `base_steps` DDIM steps (blotchy, off-colour);
    "grain" adds Gaussian noise of std `grain` to base_images (seeded by `seed`), clipped to [0, 1].
    progress: a tqdm bar advanced by the images sampled (fewer_steps only)."""
    if kind == "fewer_steps":
        return sample_images(cascade, captions, seeds, num_stages=1, guidance_scale=3.0,
                             num_inference_steps=base_steps, progress=progress)
    if kind == "grain":
        g = torch.Generator().manual_seed(seed)
        return (base_images + grain * torch.randn(base_images.shape, generator=g)).clamp(0, 1)
    raise ValueError(f"kind={kind!r}: pick one of {DEGRADATIONS}")


def noise_level_sweep(cascade, base_images: torch.Tensor, prompts, extractor, ref: Reference, *, seeds=(0, 1),
                      noise_levels=NOISE_LEVELS, guidance_scales=SR_GUIDANCE, num_inference_steps: int = 20,
                      progress=None) -> dict:
    """SR stage at every (guidance_scale, noise_level), same base_images: {"noise_level", "guidance_scale",
    "rows": {str(w): [measure_samples per level]}}."""
    if not noise_levels or not guidance_scales:
        raise ValueError("noise_levels and guidance_scales must be non-empty")
    captions, specs = [c for c, _ in prompts], [s for _, s in prompts]
    rows = {}
    for w in guidance_scales:
        rows[str(float(w))] = [measure_samples(
            sample_images(cascade, captions, seeds, lowres_images=base_images, progress=progress,
                          **sr_options(cascade, lv, w, num_inference_steps)), specs, extractor, ref)
            for lv in noise_levels]
    return {"noise_level": [int(v) for v in noise_levels], "guidance_scale": [float(w) for w in guidance_scales],
            "rows": rows}


QUICK = dict(guidance_scales=(1.0, 3.0, 8.0), noise_levels=(0, 300), sr_guidance=(1.0, 3.0), base_steps=8, sr_steps=6)
FULL = dict(guidance_scales=GUIDANCE_SCALES, noise_levels=NOISE_LEVELS, sr_guidance=SR_GUIDANCE, base_steps=25,
            sr_steps=20)


def run_effects(cascade, extractor, *, noaug=None, sr_arms: dict | None = None, num_prompts: int = 48,
                num_seeds: int = 2, quick: bool = False, sr_seeds: int = 1, out: str | Path | None = None, parts=("guidance", "thresholding", "sr"),
                modes=tuple(THRESHOLDINGS), progress: bool = True, note: str = "", noise_levels=None,
                sr_guidance=None, thresholding_scales=None, base_steps: int | None = None) -> dict:
    """All three measurements; written to `out` (JSON) after each part. Returns the results dict.
    SR arms compared: "aug" (cascade's own SR stage), "noaug" (noaug's), and sr_arms {name: cascade} (their
    stage 1), each at its own sample_noise_level; then all of them on degraded base samples (DEGRADATIONS)."""
    from tqdm.auto import tqdm
    if num_seeds < 2 or not 1 <= sr_seeds <= num_seeds:
        raise ValueError(f"need num_seeds >= 2 (diversity compares seeds) and 1 <= sr_seeds <= num_seeds, "
                         f"got {num_seeds}, {sr_seeds}")
    s = dict(QUICK if quick else FULL)
    s.update({k: tuple(v) for k, v in (("noise_levels", noise_levels), ("sr_guidance", sr_guidance)) if v})
    s["base_steps"] = base_steps or s["base_steps"]
    th_scales = tuple(thresholding_scales or s["guidance_scales"])
    prompts, seeds = effect_prompts(num_prompts), tuple(range(num_seeds))
    specs = [sp for _, sp in prompts]
    base_size = cascade.config.stages[0].image_size
    ref = Reference.build(specs, num_seeds, base_size)
    bad = [p for p in parts if p not in ("guidance", "thresholding", "sr")] + [m for m in modes if m not in THRESHOLDINGS]
    if bad:
        raise ValueError(f"unknown parts or modes {bad}: parts are guidance, thresholding, sr; modes "
                         f"{tuple(THRESHOLDINGS)}")
    n_w = len(s["guidance_scales"])
    total = num_prompts * num_seeds * (n_w * ("guidance" in parts) + len(th_scales) * ("thresholding" in parts) * len(
        [m for m in modes if m != "dynamic_0.95" or "guidance" not in parts]))
    if "sr" in parts:
        n_arms = 1 + (noaug is not None) + len(sr_arms or {})
        total += num_prompts * num_seeds * (2 + n_arms + (noaug is not None))  # base, SR arms, aug at level 0
        total += num_prompts * num_seeds * (1 + n_arms * len(DEGRADATIONS))  # fewer-steps base, arms on degraded
        total += num_prompts * sr_seeds * len(s["noise_levels"]) * len(s["sr_guidance"])
    bar = tqdm(total=total, desc="effects", unit="img", disable=not progress)
    res = {"settings": {"num_prompts": num_prompts, "seeds": list(seeds), "prompt_kinds": list(KINDS),
                        "base_steps": s["base_steps"], "sr_steps": s["sr_steps"], "sampler": "ddim",
                        "quick": quick, "spread": "(max - min) / 2 over seeds", "note": note},
           "reference_base": reference_fds(extractor, ref)}

    def save():
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(_rounded(res), indent=1) + "\n")
    sweep = dict(seeds=seeds, guidance_scales=s["guidance_scales"], num_inference_steps=s["base_steps"],
                 progress=bar)
    t0 = time.time()
    if "guidance" in parts:
        res["guidance"] = guidance_sweep(cascade, prompts, extractor, ref, **sweep)  # preset: dynamic, p = 0.95
        save()
    if "thresholding" in parts:
        res["thresholding"] = {}
        done = {"dynamic_0.95": res["guidance"]} if "guidance" in res else None
        for m in modes:                                        # one at a time, saved as each finishes
            res["thresholding"].update(thresholding_sweep(cascade, prompts, extractor, ref, modes=(m,),
                                                          done=done, **{**sweep, "guidance_scales": th_scales}))
            save()
    if "sr" in parts:
        base = sample_images(cascade, [c for c, _ in prompts], seeds, num_stages=1, guidance_scale=3.0,
                             num_inference_steps=s["base_steps"], progress=bar)    # the preset's base settings
        sr_size = cascade.config.stages[1].image_size
        ref_sr = Reference.build(specs, num_seeds, sr_size)
        res["reference_sr"] = reference_fds(extractor, ref_sr)
        res["base_for_sr"] = measure_samples(base, specs, extractor, ref)
        arms = {"aug": cascade, **({} if noaug is None else {"noaug": noaug}), **(sr_arms or {})}
        res["sr_arms"] = {name: {"train_noise_level_max": c.config.stages[1].train_noise_level_max,
                                 "sample_noise_level": c.config.stages[1].sample_noise_level}
                          for name, c in arms.items()}
        res["sr_comparison"] = sr_comparison(arms, base, prompts, extractor, ref_sr, seeds=seeds,
                                             num_inference_steps=s["sr_steps"], progress=bar)
        if noaug is not None:                                  # the augmented stage at level 0 (no aug at sampling)
            res["sr_comparison_level0"] = sr_comparison({"aug": cascade}, base, prompts, extractor, ref_sr, seeds=seeds,
                                                        noise_level=0, num_inference_steps=s["sr_steps"],
                                                        progress=bar)
        save()
        captions, res["sr_robustness"] = [c for c, _ in prompts], {}
        for kind in DEGRADATIONS:                              # the same arms fed worse base samples
            bad = degrade_lowres(cascade, base, captions, seeds, kind=kind, progress=bar)
            res["sr_robustness"][kind] = {"input": measure_samples(bad, specs, extractor, ref),
                                          **sr_comparison(arms, bad, prompts, extractor, ref_sr, seeds=seeds,
                                                          num_inference_steps=s["sr_steps"], progress=bar)}
            save()
        ref_sweep = Reference.build(specs, sr_seeds, sr_size)
        res["reference_sr_sweep"] = reference_fds(extractor, ref_sweep)
        res["noise_level_sweep"] = noise_level_sweep(cascade, base[:sr_seeds], prompts, extractor, ref_sweep,
                                                     seeds=seeds[:sr_seeds], noise_levels=s["noise_levels"],
                                                     guidance_scales=s["sr_guidance"],
                                                     num_inference_steps=s["sr_steps"], progress=bar)
    bar.close()
    res["settings"]["seconds"] = round(time.time() - t0)
    save()
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cascade", required=True, help="trained scenes cascade directory (Cascade.from_pretrained)")
    p.add_argument("--noaug", help="cascade whose stage 1 was trained without noise augmentation")
    p.add_argument("--sr-arm", action="append", default=[], metavar="NAME=DIR",
                   help="a further SR arm: cascade directory whose stage 1 is compared too (repeatable)")
    p.add_argument("--prompts", type=int, default=48, help="prompts (half one-object, half two-object)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (>= 2)")
    p.add_argument("--sr-seeds", type=int, default=1, help="seeds used by the SR noise-level sweep")
    p.add_argument("--parts", default="guidance,thresholding,sr", help="comma list of guidance,thresholding,sr")
    p.add_argument("--modes", default=",".join(THRESHOLDINGS), help="thresholding modes to sweep (comma list)")
    p.add_argument("--levels", help="SR sampling noise levels to sweep (comma list; default 0,50,100,200,300,500)")
    p.add_argument("--sr-guidance", help="SR guidance weights of the sweep (comma list; default 1,3,5)")
    p.add_argument("--thresholding-scales", help="guidance weights of the thresholding sweep (default: all)")
    p.add_argument("--base-steps", type=int, help="DDIM steps of the base stage (default 25; --quick 8)")
    p.add_argument("--feature-net", help="feature net weights (default: the shipped scenes net)")
    p.add_argument("--out", default="results/effects.json")
    p.add_argument("--quick", action="store_true", help="few weights, levels and steps (minutes)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ..cascade import Cascade
    extractor = FeatureExtractor.from_pretrained("scenes", path=a.feature_net)
    noaug = Cascade.from_pretrained(a.noaug) if a.noaug else None
    cascade = Cascade.from_pretrained(a.cascade)
    sr_arms = {}
    for arm in a.sr_arm:
        name, sep, path = arm.partition("=")
        if not sep or not name or not path:
            p.error(f"--sr-arm {arm!r}: write NAME=DIR, e.g. aug200=runs/scenes_aug200/final")
        sr_arms[name] = Cascade.from_pretrained(path)
    listed = lambda text, kind: tuple(kind(v) for v in text.split(",")) if text else None
    res = run_effects(cascade, extractor, noaug=noaug, sr_arms=sr_arms, num_prompts=a.prompts,
                      noise_levels=listed(a.levels, int), sr_guidance=listed(a.sr_guidance, float),
                      thresholding_scales=listed(a.thresholding_scales, float), base_steps=a.base_steps,
                      num_seeds=a.seeds, sr_seeds=a.sr_seeds, quick=a.quick, out=a.out,
                      parts=tuple(a.parts.split(",")), modes=tuple(a.modes.split(",")),
                      note=f"cascade {a.cascade}" + (f", noaug {a.noaug}" if a.noaug else "")
                      + "".join(f", {arm}" for arm in a.sr_arm))
    print(f"wrote {a.out} ({res['settings']['seconds']} s)")


if __name__ == "__main__":
    main()
