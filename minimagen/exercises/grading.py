"""Grading one student function: run it on prepared cases, compare with the library, say what is wrong.

A checker (see `*_checks.py`) prepares a list of `Case`s: the arguments to call the student's function with and
the output the *library* function gives for them. `run_check` calls the student's function on each case in
turn and stops at the first problem, which it turns into one sentence a student can act on:

    not implemented yet     the stub still raises NotImplementedError
    raised an error         any other exception, reported with the case that triggered it
    wrong type / shape      None (a forgotten `return`), a tuple, a tensor of the wrong shape
    wrong values            named by the known mistake whose output matches the student's (each checker
                            computes those wrong variants; when several match the first wrong case, the
                            later cases decide), else described by where the values differ

Probes are extra questions that are not "compare with the library" (e.g. "does the last DDPM step ignore
the noise?"); they run before the cases. Nothing here prints code: messages name quantities and equations.

Calling the library is not an answer: while the student's function runs, the minimagen functions the exercise
re-implements are replaced by stand-ins that record the call (`library_calls_flagged`), in every minimagen
module and in the student's own namespace (`from minimagen.diffusion import q_sample as q` is caught too).

Contents: `CheckResult`, `Case`, `run_check`, `library_calls_flagged`, `when_implemented`, and the case-building
helpers `rng`, `randn64`, `images64`, `one_value_for_all`, `extra_dims_hint`, `noise_probes`.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

RTOL, ATOL = 1e-5, 1e-6  # relative and absolute tolerance of every comparison (float64 rounding)
# A mistake is a diagnosis in words and the output a function making that mistake returns on the case.
Mistakes = Callable[..., Sequence[tuple[str, Tensor]]]
# A probe calls the student's function through `call(case_name, *args)` and returns (case_name, diagnosis)
# when it finds a problem, or None.
Probe = Callable[[Callable[..., Tensor]], "tuple[str, str] | None"]


@dataclass
class CheckResult:
    """The verdict on one exercise: `passed` and the `message` that was printed."""

    exercise: str  # the function's name in the notebook, e.g. "q_sample"
    passed: bool  # True only when every case and probe agreed with the library
    status: str  # "passed", "wrong", "error" (the student's code raised) or "not implemented"
    message: str  # the one-paragraph verdict a student reads, starting with ✅, ❌ or ⏳
    cases_checked: int  # cases and probes that passed before the verdict

    def __str__(self) -> str:
        return self.message


@dataclass
class Case:
    """One call of the student's function, with what the library returns for the same arguments."""

    name: str  # what the student reads, e.g. "a batch of 1 at t = 999"
    args: tuple  # positional arguments, in the order of the stub's signature
    expected: Tensor  # the library function's output for `args`
    hint: str = ""  # said when the values are wrong and no known mistake matches


class _Stop(Exception):
    """Ends a check early with a verdict (status, message)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _describe(value) -> str:
    """Short description of an argument for error messages: shapes for tensors, values for small ones."""
    if isinstance(value, Tensor):
        if value.numel() <= 8 and value.dim() <= 1:
            return str(value.tolist())
        return f"tensor of shape {tuple(value.shape)}"
    return repr(value)


IMAGE_BROADCAST_HINT = ("a per-sample quantity of shape (B,) must be reshaped to (B, 1, 1, 1) before it multiplies "
                        "images of shape (B, C, H, W)")


def _error_hint(error: Exception, broadcast_hint: str) -> str:
    text = str(error)
    if "must match the size of tensor" in text or "cannot be broadcast" in text or "shape mismatch" in text:
        return f" (a shape mismatch: {broadcast_hint})"
    if "index" in text and "out of bounds" in text:
        return (" (an index out of range: timesteps run from 0 to T-1, so alphas_cumprod[t] is the value *at* t, "
                "not at t + 1; t_prev = -1 means the clean image)")
    if "q must be in the range [0, 1]" in text:
        return " (p is a fraction such as 0.95, not a percentage such as 95)"
    return ""


class LibraryFunctionCalled(Exception):
    """Raised by a stand-in for a library function the student must write themselves."""


@contextlib.contextmanager
def library_calls_flagged(fn: Callable, functions: Mapping[str, Callable], calls: list[str]) -> Iterator[None]:
    """While active, every function in `functions` (name -> minimagen function) is replaced by a stand-in that
    appends its name to `calls` and raises LibraryFunctionCalled: in each loaded minimagen module that holds it
    (minimagen.exercises, the checkers themselves, excepted), in fn's global namespace (a notebook's) and in fn's
    closure. Everything is put back on exit, also when fn raised."""
    if not functions:
        yield
        return
    by_id = {id(f): name for name, f in functions.items()}

    def stand_in(name: str) -> Callable:
        def flagged(*args, **kwargs):
            calls.append(name)
            raise LibraryFunctionCalled(name)
        return flagged

    namespaces = [vars(m) for key, m in list(sys.modules.items()) if m is not None and
                  (key == "minimagen" or key.startswith("minimagen.")) and not key.startswith("minimagen.exercises")]
    target = fn.func if isinstance(fn, functools.partial) else fn
    if isinstance(getattr(target, "__globals__", None), dict):
        namespaces.append(target.__globals__)
    restore: list[Callable[[], None]] = []
    try:
        for namespace in namespaces:
            for key, value in list(namespace.items()):
                if id(value) in by_id and callable(value):
                    namespace[key] = stand_in(by_id[id(value)])
                    restore.append(functools.partial(namespace.__setitem__, key, value))
        for cell in getattr(target, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if id(value) in by_id and callable(value):
                cell.cell_contents = stand_in(by_id[id(value)])
                restore.append(functools.partial(setattr, cell, "cell_contents", value))
        yield
    finally:
        for undo in reversed(restore):
            undo()


def _library_verdict(exercise: str, name: str) -> _Stop:
    return _Stop("wrong", f"❌ your function calls minimagen's {name}: write it yourself (the check compares your "
                          f"{exercise} with minimagen's, so calling it proves nothing)")


def _call(exercise: str, fn: Callable, case_name: str, args: tuple, broadcast_hint: str = IMAGE_BROADCAST_HINT,
          library: Mapping[str, Callable] | None = None):
    """fn(*args) on copies of the tensors (a student's in-place edit cannot spoil the next case), with the
    functions in `library` flagged (see library_calls_flagged)."""
    copies = [a.clone() if isinstance(a, Tensor) else a for a in args]
    calls: list[str] = []
    try:
        with library_calls_flagged(fn, library or {}, calls):
            got = fn(*copies)
    except NotImplementedError:
        raise _Stop("not implemented", f"⏳ {exercise} is not implemented yet: replace the line that raises "
                                       f"NotImplementedError with your code, then run this check again.") from None
    except LibraryFunctionCalled as called:
        raise _library_verdict(exercise, str(called)) from None
    except Exception as error:  # the student's bug: reported in words, never re-raised as a traceback
        if calls:  # a stand-in raised and the student's code turned it into another error
            raise _library_verdict(exercise, calls[0]) from None
        shown = ", ".join(_describe(a) for a in args)
        raise _Stop("error", f"❌ your {exercise} raised {type(error).__name__} on case '{case_name}' "
                             f"(called with {shown}): {error}{_error_hint(error, broadcast_hint)}") from None
    if calls:  # the student caught the stand-in's exception and carried on
        raise _library_verdict(exercise, calls[0])
    return got


def _close(a: Tensor, b: Tensor, equal_nan: bool = False) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL, equal_nan=equal_nan)


def _matching(got: Tensor, mistakes: Sequence[tuple[str, Tensor]]) -> list[str]:
    """The distinct diagnoses (in list order) whose wrong output equals `got`."""
    found: list[str] = []
    for diagnosis, wrong in mistakes:
        if diagnosis not in found and _close(got, wrong, equal_nan=True):
            found.append(diagnosis)
    return found


def _narrow(candidates: list[str], later: Sequence[Case], call: Callable[[Case], object], mistakes: Mistakes) -> str:
    """Several mistakes explain the first wrong case (e.g. sqrt(beta) and beta are equal when beta = 1): keep the
    ones that also explain the student's output on the later cases, until one is left. Returns the first left."""
    for case in later:
        try:
            got = call(case)
        except _Stop:  # the student's code fails on this case: no more evidence
            break
        if not isinstance(got, Tensor) or tuple(got.shape) != tuple(case.expected.shape):
            break
        variants: dict[str, list[Tensor]] = {}
        for diagnosis, wrong in mistakes(*case.args):
            variants.setdefault(diagnosis, []).append(wrong)
        kept = [d for d in candidates if d not in variants or any(_close(got, w, equal_nan=True) for w in variants[d])]
        if kept:
            candidates = kept
        if len(candidates) == 1:
            break
    return candidates[0]


def _value_problem(got: Tensor, case: Case) -> str:
    """Where `got` differs from case.expected, for a wrong answer that no known mistake explains."""
    got64, want = got.detach().double(), case.expected.double()
    if not torch.isfinite(got64).all():
        bad = sorted({int(i) for i in (~torch.isfinite(got64)).nonzero()[:, 0]})
        return f"your output contains NaN or inf (in sample {bad}): a division by zero, or the square root of a " \
               f"negative number?" + (f" {case.hint}" if case.hint else "")
    diff = (got64 - want).abs()
    worst = diff.max().item()
    scale = want.abs().max().item()
    text = f"the values differ from the expected ones (largest difference {worst:.3g}, where values are up to " \
           f"{scale:.3g})"
    if got.dim() >= 1 and got.shape[0] > 1:
        wrong = [b for b in range(got.shape[0]) if not _close(got64[b], want[b])]
        text += f"; samples {wrong} are wrong, the other {got.shape[0] - len(wrong)} right"
    if worst <= 1e-3 * max(scale, 1.0):
        text += ". This is close: are you losing precision (e.g. converting to float32)? The checks run in float64"
    return text + (f". {case.hint}" if case.hint else "")


def _output_problem(got, case: Case, shape_hint: Callable[[Case, tuple], str] | None) -> str | None:
    """A sentence about the type or shape of `got`, or None when it is a tensor of the expected shape."""
    if got is None:
        return "your function returned None: did you forget the `return` statement?"
    if not isinstance(got, Tensor):
        return f"your function returned a {type(got).__name__}; it must return one torch.Tensor"
    if tuple(got.shape) != tuple(case.expected.shape):
        text = f"wrong output shape: expected {tuple(case.expected.shape)}, got {tuple(got.shape)}"
        extra = shape_hint(case, tuple(got.shape)) if shape_hint is not None else ""
        return text + (f"; {extra}" if extra else "")
    return None


def run_check(exercise: str, fn: Callable, cases: Sequence[Case], mistakes: Mistakes | None = None,
              probes: Sequence[Probe] = (), shape_hint: Callable[[Case, tuple], str] | None = None,
              broadcast_hint: str = IMAGE_BROADCAST_HINT, library: Mapping[str, Callable] | None = None,
              verbose: bool = True) -> CheckResult:
    """Run `fn` on the probes, then on every case; print and return the verdict.

    mistakes(*case.args) -> [(diagnosis, wrong_output), ...]: the known wrong answers for that case.
    shape_hint(case, got_shape) -> a sentence (or "") explaining a typical wrong shape.
    broadcast_hint: what to say when the student's code fails with a broadcasting error.
    library: {name: minimagen function} the exercise re-implements; calling one (or passing it) fails the check.
    """
    checked = 0
    library = dict(library or {})
    try:
        if not callable(fn):
            raise _Stop("error", f"❌ check_{exercise} needs your function itself, e.g. check_{exercise}({exercise}), "
                                 f"not {type(fn).__name__}")
        for name, function in library.items():
            if fn is function or getattr(fn, "func", None) is function:
                raise _Stop("wrong", f"❌ you passed minimagen's {name} itself: write your own {exercise} in the "
                                     f"cell above and pass that")
        for probe in probes:
            found = probe(lambda name, *args: _call(exercise, fn, name, args, broadcast_hint, library))
            if found is not None:
                raise _Stop("wrong", f"❌ {exercise} is wrong on case '{found[0]}': {found[1]}")
            checked += 1
        call = lambda case: _call(exercise, fn, case.name, case.args, broadcast_hint, library)
        for i, case in enumerate(cases):
            got = call(case)
            problem = _output_problem(got, case, shape_hint)
            if problem is None and not _close(got, case.expected):
                found = _matching(got, mistakes(*case.args)) if mistakes is not None else []
                if len(found) > 1:
                    found = [_narrow(found, cases[i + 1:], call, mistakes)]
                problem = found[0] if found else _value_problem(got, case)
            if problem is not None:
                raise _Stop("wrong", f"❌ {exercise} is wrong on case '{case.name}': {problem}")
            checked += 1
        result = CheckResult(exercise, True, "passed", f"✅ {exercise} is correct (checked {checked} cases)", checked)
    except _Stop as stop:
        result = CheckResult(exercise, False, stop.status, stop.message, checked)
    if verbose:
        print(result.message)
    return result


class when_implemented:
    """`with when_implemented("q_sample"):` around a picture: while a stub still raises NotImplementedError the
    cell prints which function to implement first instead of a traceback. Other errors are not caught."""

    def __init__(self, *names: str):
        self.names = names

    def __enter__(self) -> "when_implemented":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if kind is not None and issubclass(kind, NotImplementedError):
            print(f"⏳ implement {' and '.join(self.names)} above first, then run this cell again")
            return True  # only NotImplementedError is silenced: it means "not written yet", not "broken"
        return False


# ---------------------------------------------------------------- helpers the checkers build cases with
F64 = torch.float64  # every check runs in float64: only rounding may differ from the library


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn64(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=g, dtype=F64)


def images64(g: torch.Generator, batch: int, size: int = 8) -> Tensor:
    return torch.rand((batch, 3, size, size), generator=g, dtype=F64) * 2 - 1  # (B, 3, size, size) in [-1, 1]


def one_value_for_all(t: Tensor, output_for: Callable[[int], Tensor], what: str = "timestep t") -> list:
    """Wrong variants for "used one value for the whole batch": one per distinct value in t."""
    values = sorted(set(t.tolist()))
    return [(f"every sample used the same {what} = {v} instead of its own value ({what}[b] differs per sample "
             f"here: {t.tolist()}); look up one value per sample and reshape to (B, 1, 1, 1)", output_for(v))
            for v in values] if len(values) > 1 else []


def extra_dims_hint(case: Case, got: tuple) -> str:
    """shape_hint for per-sample coefficients broadcast into extra dimensions."""
    if len(got) > len(case.expected.shape):
        return "a per-sample coefficient of shape (B,) must become (B, 1, 1, 1), not gain extra dimensions"
    return ""


FRESH_NOISE = ("called twice with the same arguments it returned two different results: it draws its own random "
               "noise instead of using the `noise` argument (the caller draws the noise, so that training and "
               "sampling can be reproduced and checked)")
NOISE_IGNORED = ("the result does not change when the `noise` argument changes: use the noise you are given, do "
                 "not make your own")


def _comparable(shape: tuple, *outputs) -> bool:
    """All outputs are finite tensors of `shape` (else the cases, not a probe, should explain what is wrong)."""
    return all(isinstance(y, Tensor) and tuple(y.shape) == tuple(shape) and bool(torch.isfinite(y).all())
               for y in outputs)


def noise_probes(case_name: str, args: tuple, noise_index: int, ignored: bool = True) -> list[Probe]:
    """Probes for a function with a `noise` argument (args[noise_index]): the same arguments twice must give the
    same result (else it draws fresh noise), and, with ignored=True, another noise must change the result."""
    shape = tuple(args[noise_index].shape)  # the output has the noise's shape

    def fresh(call):
        a, b = call(case_name, *args), call(case_name, *args)
        return (f"{case_name}, called twice", FRESH_NOISE) if _comparable(shape, a, b) and not _close(a, b) else None

    def unused(call):
        other = list(args)
        other[noise_index] = torch.randn(args[noise_index].shape, generator=rng(12345), dtype=F64)
        a, b = call(case_name, *args), call(case_name, *other)
        return (f"{case_name}, called with two different noises", NOISE_IGNORED) \
            if _comparable(shape, a, b) and _close(a, b) else None

    return [fresh, unused] if ignored else [fresh]
