"""Classroom exercises with automatic checking: students write the key pieces of Imagen, the library grades them.

The notebooks in notebooks/exercises/ each explain one idea, give a function stub that raises
NotImplementedError, and end with a check such as `check_q_sample(q_sample)`. The check runs the student's
function on fixed-seed random and edge cases (t = 0 and T-1, a batch of 1, mixed per-sample timesteps, w = 0
and 1, empty masks, ...), compares it with the library function, and prints one verdict:

    ✅ q_sample is correct (checked 6 cases)
    ❌ q_sample is wrong on case 'a batch of 1 at t = 500': the noise is scaled by (1 - alpha_bar_t) instead ...
    ⏳ q_sample is not implemented yet: replace the line that raises NotImplementedError with your code, ...

Typical mistakes are diagnosed by running the student's function on crafted inputs and comparing its output with
what that one wrong formula gives (1 - sqrt(a) for sqrt(1 - a), alpha_bar at t - 1, a one-sided clip, ...), so
the message says *what* is wrong, never how the library writes it. Fresh noise drawn inside the function, and
calls to the very minimagen function the exercise re-implements, are caught too.

Map: `grading.py` (CheckResult, run_check, library_calls_flagged, when_implemented) -> `diffusion_checks.py`
(exercises 1-2), `guidance_checks.py` (3-4), `conditioning_checks.py` (5-6): one check_* per function ->
`notebooks.py` (student notebooks generated from the solutions: `python -m minimagen.exercises
--make-student-notebooks`).
"""
from .conditioning_checks import check_lowres_condition, check_masked_mean
from .diffusion_checks import check_ddpm_step, check_predict_x0, check_q_sample
from .grading import CheckResult, when_implemented
from .guidance_checks import check_dynamic_threshold, check_guidance, check_static_threshold

ALL_CHECKS = {"q_sample": check_q_sample, "predict_x0": check_predict_x0, "ddpm_step": check_ddpm_step,
              "guidance": check_guidance, "static_threshold": check_static_threshold,
              "dynamic_threshold": check_dynamic_threshold, "lowres_condition": check_lowres_condition,
              "masked_mean": check_masked_mean}  # exercise name -> its checker

__all__ = ["CheckResult", "when_implemented", "ALL_CHECKS", "check_q_sample", "check_predict_x0", "check_ddpm_step",
           "check_guidance", "check_static_threshold", "check_dynamic_threshold", "check_lowres_condition",
           "check_masked_mean"]
