"""Imagen in miniature, part 2: from per-seed results to findings.json (mean +- std, paired differences).

Every arm of a finding is trained with the same seeds, so arm and baseline are compared seed by seed: the
paired difference d_s = metric(arm, seed s) - metric(baseline, seed s), averaged over the prompt sets, has
mean m and sample std sd over the n seeds; the change is called "better" / "worse" when |m| > 2 sd / sqrt(n)
(two standard errors) and n >= 2, else "within noise".

Contents: `ATTRIBUTES`, `METRICS`, `summarise_arm`, `paired_difference`, `summarise`, `read_effects`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from .findings_arms import ARMS, FINDINGS, Budget, arm_diff

ATTRIBUTES = ("color", "shape", "size", "material", "position")  # scenes_scoring's per-object attributes


def _stats(values: list) -> dict:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


METRICS = ("attributes", "all_correct")  # summarised per prompt set; "attributes" = mean per-object accuracy


def summarise_arm(results: list[dict]) -> dict:
    """Mean +- std over seeds of every metric, per prompt set and averaged over the sets."""
    results = sorted(results, key=lambda r: r["seed"])
    sets = list(results[0]["by_set"])
    extra = ("mse_to_real",) if "mse_to_real" in results[0]["by_set"][sets[0]] else ()
    by_set = {s: {m: _stats([r["by_set"][s][m] for r in results]) for m in METRICS + extra} for s in sets}
    overall = {m: _stats([float(np.mean([r["by_set"][s][m] for s in sets])) for r in results])
               for m in METRICS + extra}
    return {"seeds": [r["seed"] for r in results], "steps": results[0]["steps"],
            "batch_size": results[0]["batch_size"], "params": results[0]["params"],
            "by_set": by_set, "overall": overall, "fidelity": _stats([r["fidelity"] for r in results]),
            "step_s": _stats([r["step_s"] for r in results]), "train_s": _stats([r["train_s"] for r in results]),
            "loss_last": _stats([r["loss_last"] for r in results])}


LOWER_IS_BETTER = ("mse_to_real",)  # metrics where a positive difference (arm - baseline) means worse


def paired_difference(arm: list[dict], baseline: list[dict], metric: str = "attributes") -> dict:
    """Per seed: arm minus baseline of `metric` averaged over the sets (same seeds: paired); mean, std,
    and "verdict": "better" / "worse" when |mean| > 2 std / sqrt(n) (and n >= 2), else "within noise"
    (for LOWER_IS_BETTER metrics a positive difference is "worse")."""
    base = {r["seed"]: float(np.mean([v[metric] for v in r["by_set"].values()])) for r in baseline}
    diffs = [float(np.mean([v[metric] for v in r["by_set"].values()])) - base[r["seed"]]
             for r in arm if r["seed"] in base]
    s = _stats(diffs)
    if s["n"] >= 2 and abs(s["mean"]) > 2 * s["std"] / math.sqrt(s["n"]):
        s["verdict"] = "better" if (s["mean"] > 0) != (metric in LOWER_IS_BETTER) else "worse"
    else:
        s["verdict"] = "within noise"
    s["per_seed"] = diffs
    return s


def summarise(results: dict[str, list[dict]], steps: dict, budget: Budget, timings: dict,
              effects_path: str | None, extra: dict) -> dict:
    out = {"budget": dataclasses.asdict(budget), "metric": "attributes = mean per-object accuracy of colour, "
           "shape, size, material and position (scenes_scoring); all_correct = every attribute and relation "
           "right", "timing_s_per_step": timings, **extra, "findings": {}}
    for name, plan_steps in steps.items():
        f = FINDINGS[name]
        done = {a: [r for r in results.get(a, []) if r["steps"] == plan_steps[a]] for a in plan_steps}
        entry = {"title": f.title, "paper": f.paper, "claim": f.claim, "baseline": f.baseline, "equal": f.equal,
                 "arms": {a: {"diff": {k: list(v) for k, v in _diff(a, f.baseline).items()},
                              **(summarise_arm(r) if r else {"missing": True})} for a, r in done.items()},
                 "vs_baseline": {}}
        for a in f.arms:
            if done[a] and done[f.baseline]:
                entry["vs_baseline"][a] = {m: paired_difference(done[a], done[f.baseline], m)
                                           for m in METRICS + (("mse_to_real",) if ARMS[a].stage == "sr" else ())}
        out["findings"][name] = entry
    out["findings"]["guidance_thresholding"] = read_effects(effects_path)
    return out


def _diff(a: str, baseline: str) -> dict:
    return arm_diff(ARMS[a], ARMS[baseline])


def read_effects(path: str | None) -> dict:
    """Finding 4 (guidance x thresholding, noise augmentation) is measured by another tool into effects.json."""
    title = "Guidance x thresholding pareto; noise conditioning augmentation on/off"
    paper = "Fig. 4c, A.8, A.11"
    if path and Path(path).is_file():
        rows = json.loads(Path(path).read_text())
        quick = bool(rows.get("settings", {}).get("quick")) if isinstance(rows, dict) else False
        return {"title": title, "paper": paper, "source": str(path), "rows": rows, "quick": quick,
                "note": "a --quick measurement (noise): see notebooks 04-06" if quick else ""}
    return {"title": title, "paper": paper, "source": None, "rows": None,
            "note": "not measured here: see notebooks 04-06 (results/effects.json was not found)"}
