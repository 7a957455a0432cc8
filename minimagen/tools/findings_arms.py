"""Imagen in miniature, part 1: what is compared. The arms of every finding, the budgets, the cache keys.

Each finding compares arms against ONE baseline arm, and every arm differs from its baseline in exactly one
field of `ArmSpec` (tests/test_findings.py checks `arm_diff` for every arm). All arms train the scenes
preset's stage (run_presets.RUN_PRESETS["scenes"]: base 16 px, or the 16 -> 64 SR stage on 32-px crops) on the
same data (data seed 0), with the same seeds and, per finding, the same budget: the same optimizer steps
(`equal="steps"`), or the same training minutes (`equal="minutes"`: an arm gets the steps that fit the
baseline's minutes at its measured step time; Imagen Fig. 4b / A.13b and Fig. A.14 compare at equal cost).

    finding            paper                           arms (one change each from the baseline)
    text_encoder       Sec. 2.1, 4.4, Fig. 4a, A.5     pretrained MiniLM | MiniLM, random weights | tiny-t5
    encoder_vs_unet    Fig. 4b, A.13b                  pretrained MiniLM | random MiniLM | 2x wider U-Net
    conditioning       Fig. A.13a                      cross-attention | pooled text vector only
    efficient_unet     Sec. 2.5, App. D.3.2, Fig. A.14 SR: Efficient U-Net | regular U-Net (equal minutes)
    beyond_paper       -                               v prediction | epsilon prediction | min-SNR-5 weighting

Contents: `ArmSpec`, `ARMS`, `arm_diff`, `Budget`, `BUDGETS`, `Finding`, `FINDINGS`, `run_preset`,
`max_length_for`, `arm_key`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ..text_encoder import DEFAULT_TEXT_ENCODER, TINY_T5
from .run_presets import RUN_PRESETS, RunPreset

RUNNER_VERSION = 1  # bump when the runner changes what a cached result means (every cache entry is redone)


@dataclass(frozen=True)
class ArmSpec:
    """One trained variant. The scenes preset, changed only where a field says so."""

    stage: str = "base"                       # "base": the 16-px base model; "sr": the 16 -> 64 SR stage
    text_encoder: str = DEFAULT_TEXT_ENCODER  # frozen encoder (max_length follows from it: max_length_for)
    base_channels: int = 32                   # width of the trained U-Net's first level (the preset's 32)
    text_attention: bool = True               # text tokens reach attention layers; False: pooled vector only
    prediction_type: str = "v_prediction"     # what the U-Net predicts (the preset's v; Imagen's is epsilon)
    min_snr_gamma: float | None = None        # min-SNR-gamma loss weighting (Hang et al. 2023); None = plain MSE
    efficient: bool = True                    # SR stage layout: Efficient U-Net (App. B.1) or the regular one

    def __post_init__(self):
        if self.stage not in ("base", "sr"):
            raise ValueError(f"stage must be 'base' or 'sr', got {self.stage!r}")


_BASELINE = ArmSpec()
ARMS: dict[str, ArmSpec] = {
    "pretrained": _BASELINE,
    "random_minilm": dataclasses.replace(_BASELINE, text_encoder=DEFAULT_TEXT_ENCODER + ":random"),
    "tiny_t5": dataclasses.replace(_BASELINE, text_encoder=TINY_T5),
    "wide_unet": dataclasses.replace(_BASELINE, base_channels=64),
    "pooled_only": dataclasses.replace(_BASELINE, text_attention=False),
    "epsilon": dataclasses.replace(_BASELINE, prediction_type="epsilon"),
    "min_snr_5": dataclasses.replace(_BASELINE, min_snr_gamma=5.0),
    "sr_efficient": ArmSpec(stage="sr"),
    "sr_regular": ArmSpec(stage="sr", efficient=False),
}


def arm_diff(arm: ArmSpec, baseline: ArmSpec) -> dict[str, tuple]:
    """{field: (baseline value, arm value)} for every ArmSpec field in which the two differ."""
    return {f.name: (getattr(baseline, f.name), getattr(arm, f.name)) for f in dataclasses.fields(ArmSpec)
            if getattr(arm, f.name) != getattr(baseline, f.name)}


@dataclass(frozen=True)
class Budget:
    """How much every arm trains and how it is scored (the same for every arm of a finding)."""

    base_steps: int             # optimizer steps of a base arm (equal="minutes": of the baseline)
    sr_steps: int               # optimizer steps of the baseline SR arm
    batch_size: int             # base images per step
    sr_batch_size: int          # SR crops per step
    num_items: int              # pre-rendered training scenes (data seed 0, shared by all arms)
    num_prompts: int            # prompts per evaluation set
    seeds: tuple[int, ...]      # training + sampling seeds, the same for every arm
    sample_steps: int           # DDIM steps of the base stage (guidance 3, dynamic thresholding: the preset's)
    sr_sample_steps: int        # DDIM steps of the SR stage (guidance 1, static thresholding)
    warmup_steps: int           # linear LR warm-up (the preset's 100 would never finish in a quick run)
    timing_steps: int           # steps timed per arm for the equal-minutes budgets (after one warm-up step)


BUDGETS: dict[str, Budget] = {
    # ~50 CPU-core-minutes of work: about 25-30 minutes with 2 worker processes on an idle 2-core CPU (the
    # measured wall time is findings.json "run"); the scenes preset trains its base stage 2500 steps
    "full": Budget(base_steps=160, sr_steps=160, batch_size=32, sr_batch_size=16, num_items=8000, num_prompts=48,
                   seeds=(0, 1, 2), sample_steps=12, sr_sample_steps=8, warmup_steps=40, timing_steps=3),
    # CI and notebook 09's live run: every finding end to end in about a minute; numbers are noise
    "quick": Budget(base_steps=8, sr_steps=6, batch_size=8, sr_batch_size=4, num_items=64, num_prompts=3,
                    seeds=(0, 1), sample_steps=4, sr_sample_steps=2, warmup_steps=4, timing_steps=1),
}

BASE_SETS = ("paraphrase", "misspelled", "two", "single_heldout")  # the scenes domain's prompt kinds we score
SR_SETS = ("single_heldout", "two")  # SR arms upsample real 16-px renders of these prompts


@dataclass(frozen=True)
class Finding:
    title: str                 # one line
    paper: str                 # where the paper shows it
    claim: str                 # what the paper says, in a sentence
    baseline: str              # the ARMS name every other arm is compared with
    arms: tuple[str, ...]      # the other ARMS names
    equal: str = "steps"       # "steps" or "minutes": what every arm gets the same of


FINDINGS: dict[str, Finding] = {
    "text_encoder": Finding(
        "Frozen pretrained text encoder vs the same architecture with random weights",
        "Sec. 2.1, 4.4, Fig. 4a, A.5",
        "Pretrained text encoders matter: conditioning on a frozen pretrained language model gives better "
        "image-text alignment than weaker encoders.",
        "pretrained", ("random_minilm", "tiny_t5")),
    "encoder_vs_unet": Finding(
        "A better text encoder vs a 2x wider U-Net, at the same training minutes",
        "Fig. 4b, A.13b",
        "Scaling the text encoder helps alignment more than scaling the U-Net.",
        "pretrained", ("random_minilm", "wide_unet"), equal="minutes"),
    "conditioning": Finding(
        "Text cross-attention vs the pooled text vector only",
        "Fig. A.13a",
        "Cross-attention on the text tokens clearly beats mean or attention pooling alone.",
        "pretrained", ("pooled_only",)),
    "efficient_unet": Finding(
        "Efficient U-Net vs a regular U-Net for the SR stage, at the same training minutes",
        "Sec. 2.5, App. D.3.2, Fig. A.14",
        "The Efficient U-Net trains 2-3x faster and converges faster than a regular U-Net.",
        "sr_efficient", ("sr_regular",), equal="minutes"),
    "beyond_paper": Finding(
        "Beyond the paper: epsilon vs v prediction, min-SNR-5 loss weighting",
        "Salimans & Ho 2022 (v); Hang et al. 2023 (min-SNR)",
        "v prediction and min-SNR-gamma weighting are reported to train faster than epsilon / plain MSE.",
        "pretrained", ("epsilon", "min_snr_5")),
}


def max_length_for(text_encoder: str) -> int:
    """Caption tokens kept: the preset's 32 for word-piece MiniLM, 128 for byte-level tiny-t5 (~60 bytes)."""
    return 128 if text_encoder == TINY_T5 else RUN_PRESETS["scenes"].max_length


def run_preset(arm: ArmSpec, budget: Budget, steps: int | None = None) -> RunPreset:
    """The scenes RunPreset of `arm` under `budget` (2 stages; the arm trains one of them for `steps`)."""
    # the committed full run was made when the scenes preset's SR augmentation was [0, 500) at 100: pinned, so
    # its cache keys and SR arms stay what they were
    scenes = dataclasses.replace(RUN_PRESETS["scenes"], train_noise_level_max=500, sample_noise_level=100)
    (base_name, base_over), (sr_name, sr_over) = scenes.unets
    if arm.stage == "base":
        base_over = {**base_over, "base_channels": arm.base_channels}
        if not arm.text_attention:  # no attention layer sees the text tokens: the FiLM'ed pooled vector only
            base_over = {**base_over, "attn_levels": (), "cross_attn_levels": ()}
        trained = steps if steps is not None else budget.base_steps
        stage_steps, batch = (trained, 0), budget.batch_size
    else:
        sr_over = {**sr_over, "base_channels": arm.base_channels, "efficient": arm.efficient}
        if not arm.text_attention:
            sr_over = {**sr_over, "attn_levels": (), "cross_attn_levels": ()}
        trained = steps if steps is not None else budget.sr_steps
        stage_steps, batch = (0, trained), budget.sr_batch_size
    return dataclasses.replace(
        scenes, unets=((base_name, base_over), (sr_name, sr_over)), steps=stage_steps, batch_size=batch,
        warmup_steps=budget.warmup_steps, num_items=budget.num_items, text_encoder=arm.text_encoder,
        max_length=max_length_for(arm.text_encoder), prediction_type=arm.prediction_type,
        min_snr_gamma=arm.min_snr_gamma, num_eval_prompts=budget.num_prompts,
        num_inference_steps=(budget.sample_steps, budget.sr_sample_steps), checkpoint_every=0)


def arm_key(arm: ArmSpec, budget: Budget, seed: int, steps: int) -> str:
    """Cache key of one (arm, seed) result: everything that changes its numbers (the full RunPreset, the
    seed, the scoring settings, RUNNER_VERSION). 16 hex digits."""
    preset = dataclasses.asdict(run_preset(arm, budget, steps))
    preset.pop("notes", None)
    scoring = {"sets": BASE_SETS if arm.stage == "base" else SR_SETS, "num_prompts": budget.num_prompts}
    blob = json.dumps({"arm": dataclasses.asdict(arm), "preset": preset, "seed": seed, "scoring": scoring,
                       "version": RUNNER_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
