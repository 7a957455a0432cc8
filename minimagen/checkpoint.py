"""Safe, atomic checkpoints: JSON for settings, safetensors for weights, never pickle for weights.

A cascade directory written by `Cascade.save_pretrained` (names as in diffusers):

    config.json                 {"format": "minimagen-cascade", "format_version": 1, "config": {...}}
    stage0.safetensors          raw weights of the base U-Net
    stage0.ema.safetensors      EMA weights (what sampling uses), when the cascade has them
    stage1.safetensors ...      one pair per stage

Loading reads only those files: safetensors holds raw tensors and a JSON header, so a checkpoint someone
sends you cannot run code on your machine (a planted `pytorch_model.bin` pickle is simply never opened).
Every write goes to a temporary sibling directory that is renamed into place when complete, so a crash
mid-write leaves the previous checkpoint intact, never a half-written one.

Training checkpoints (`Trainer.save_checkpoint`) are step-XXXXXXXX directories holding such a cascade directory,
trainer_state.json (step counters, TrainConfig) and optimizer{i}.pt (AdamW + LR schedule state, loaded with
weights_only=True). Only the newest `keep` are kept; `latest_checkpoint(root)` finds the newest complete one.

Contents: `atomic_write_dir`, `write_json`, `read_json`, `load_safetensors`, `save_cascade`, `read_cascade_config`,
`load_cascade_weights`; `write_json_atomic`, `save_training_checkpoint`, `read_training_checkpoint`,
`latest_checkpoint`.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "minimagen-cascade"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file or directory is missing, truncated, tampered with or from another model."""


def atomic_write_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Run write(tmp_dir), then move tmp_dir to `target` (replacing an old one only once the new one is complete)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    for f in tmp.rglob("*"):  # data on disk before the rename makes it visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)
    else:
        os.rename(tmp, target)
    return target


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a minimagen checkpoint directory holds config.json and "
                              "stage*.safetensors; save one with Cascade.save_pretrained(dir)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the file is truncated or was edited by hand — "
                              "re-copy the checkpoint") from err


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file with errors that name the file and the fix."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing; re-copy the whole checkpoint directory")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err}); re-copy or re-save the checkpoint") from err


def _load_into(module: torch.nn.Module, path: Path) -> None:
    state = load_safetensors(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this U-Net: missing {missing[:3]}, unexpected {unexpected[:3]} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected); the config.json beside it "
                              "describes a different architecture")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} but the U-Net built from "
                                  f"config.json expects {tuple(own[name].shape)}; config and weights do not match")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values (saved after training "
                                  "diverged?); resume from an earlier step-* checkpoint or re-train")
    module.load_state_dict(state)


def save_cascade(cascade, directory: str | Path, ema_only: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write config.json and stage*.safetensors atomically (see module docstring).

    ema_only=True writes only the EMA weights (what sampling uses; half the size, cannot resume training);
    dtype=torch.float16 stores floating-point tensors in half precision (they are cast back on load).
    """
    if ema_only and cascade.ema_unets is None:
        raise ValueError("ema_only=True, but this cascade has no EMA weights (train it with Trainer first)")

    def write(tmp: Path) -> None:
        write_json(tmp / "config.json", {"format": FORMAT, "format_version": FORMAT_VERSION,
                                         "config": cascade.config.to_dict()})
        for i, unet in enumerate(cascade.unets):
            if not ema_only:
                save_file(_contiguous(unet.state_dict(), dtype), str(tmp / f"stage{i}.safetensors"))
            if cascade.ema_unets is not None:
                save_file(_contiguous(cascade.ema_unets[i].state_dict(), dtype), str(tmp / f"stage{i}.ema.safetensors"))
    return atomic_write_dir(directory, write)


def _contiguous(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in state.items()}


def read_cascade_config(directory: str | Path) -> dict:
    """The cascade config dict stored in directory/config.json, after checking that it is a minimagen checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        hint = ""
        leftovers = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.is_dir() else []
        if leftovers:
            hint = f" (an interrupted save left the previous checkpoint at {leftovers[-1]}: rename it back)"
        raise CheckpointError(f"checkpoint directory {directory} does not exist{hint}; pass the folder that "
                              "Cascade.save_pretrained or train_small.py wrote")
    for sub, why in (("cascade", "a training step-* directory keeps its cascade there"),
                     ("final", "train_small.py writes the finished cascade there")):
        if not (directory / "config.json").is_file() and (directory / sub / "config.json").is_file():
            raise CheckpointError(f"{directory} has no config.json but {directory / sub} has: pass that folder ({why})")
    meta = read_json(directory / "config.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{directory / 'config.json'} is not a minimagen cascade config (format "
                              f"{found!r}, expected {FORMAT!r}); is this another library's checkpoint?")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} was written by a newer minimagen (format_version "
                              f"{meta['format_version']} > {FORMAT_VERSION}); upgrade minimagen")
    return meta["config"]


def load_cascade_weights(cascade, directory: str | Path) -> None:
    """Load stage*.safetensors (and stage*.ema.safetensors when present, then used for sampling) into `cascade`."""
    directory = Path(directory)
    n = cascade.num_stages
    ema_files = [directory / f"stage{i}.ema.safetensors" for i in range(n)]
    missing = [f.name for f in ema_files if not f.is_file()]
    if missing and len(missing) < len(ema_files):  # half-copied: silently sampling raw weights would hide it
        raise CheckpointError(f"{directory} has EMA weights for some stages but not {missing}; re-copy the whole "
                              "checkpoint directory")
    raw_files = [directory / f"stage{i}.safetensors" for i in range(n)]
    ema_only = not missing and not any(f.is_file() for f in raw_files)  # save_pretrained(ema_only=True)
    for unet, raw, ema in zip(cascade.unets, raw_files, ema_files):
        _load_into(unet, ema if ema_only else raw)
    if not missing:
        cascade.ema_unets = copy.deepcopy(cascade.unets).requires_grad_(False)
        for unet, f in zip(cascade.ema_unets, ema_files):
            _load_into(unet, f)


# ----------------------------------------------------------------------------- resumable training checkpoints
def write_json_atomic(path: Path, obj) -> None:
    """Write JSON so that a kill mid-write leaves the old file, never half a new one."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def save_training_checkpoint(target: Path, cascade, trainer_state: dict, optimizers, schedulers,
                             keep: int = 2) -> Path:
    """Write target (a step-XXXXXXXX directory: cascade/, trainer_state.json, optimizer{i}.pt) atomically, then
    delete all but the newest `keep` step-* siblings and temp folders left by killed writers."""
    def write(tmp: Path) -> None:
        save_cascade(cascade, tmp / "cascade")
        write_json(tmp / "trainer_state.json", trainer_state)
        for i, (opt, sch) in enumerate(zip(optimizers, schedulers)):
            torch.save({"optimizer": opt.state_dict(), "scheduler": sch.state_dict()}, tmp / f"optimizer{i}.pt")

    path = atomic_write_dir(target, write)
    for old in step_checkpoints(target.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    _remove_dead_writers_temp_dirs(target.parent)
    return path


def read_training_checkpoint(path: str | Path | None, cascade) -> tuple[list[int], object, list[tuple[dict, dict]]]:
    """Read and check a save_training_checkpoint directory for `cascade` (same config required).

    Returns (steps per stage, the stored cascade, [(optimizer state, scheduler state)] per stage); nothing of the
    caller's is changed. Optimizer files are read with torch.load(weights_only=True): a tampered pickle is refused.
    """
    if path is None:  # what latest_checkpoint returns for an empty or wrong folder
        raise CheckpointError("no checkpoint to load (latest_checkpoint found no step-* directory); check the "
                              "folder you passed, or start training from scratch")
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (it has no trainer_state.json); pass a step-* "
                              "directory written by Trainer.save_checkpoint, e.g. latest_checkpoint(root). "
                              "For sampling-only weights use Cascade.from_pretrained")
    state = read_json(path / "trainer_state.json")
    steps = state.get("steps") if isinstance(state, dict) else None
    if not isinstance(steps, list):
        raise CheckpointError(f"{path / 'trainer_state.json'} has no valid 'steps' list (got {steps!r}); re-copy "
                              "the checkpoint, or resume from an earlier step-* directory")
    if len(steps) != cascade.num_stages:
        raise CheckpointError(f"{path} was trained with {len(steps)} stages, this cascade has {cascade.num_stages}: "
                              "resume with the same number of stages (train_small.py: the same --preset/--stages)")
    loaded = type(cascade).from_pretrained(path / "cascade")
    if loaded.config.to_dict() != cascade.config.to_dict():
        where = _first_difference(loaded.config.to_dict(), cascade.config.to_dict())
        raise CheckpointError(f"{path} was trained with a different cascade config ({where}); resume with the "
                              "same settings (or start a new --out directory)")
    if loaded.ema_unets is None:
        raise CheckpointError(f"{path / 'cascade'} has no stage*.ema.safetensors; re-copy the whole step-* directory")
    blobs = []
    for i in range(cascade.num_stages):
        f = path / f"optimizer{i}.pt"
        try:
            blob = torch.load(f, map_location=cascade.device, weights_only=True)  # tensors and plain containers only
            blobs.append((blob["optimizer"], blob["scheduler"]))
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"{f} was refused: it holds Python objects other than tensors and plain "
                                  "containers, so it is not a file minimagen wrote (tampered?). Nothing in it "
                                  "was run; delete it and resume from another step-* directory") from err
        except Exception as err:  # noqa: BLE001 - re-raised with the file named
            raise CheckpointError(f"{f} could not be read ({type(err).__name__}: {err}); resume from an earlier "
                                  "step-* directory") from err
    return [int(s) for s in steps], loaded, blobs


def _first_difference(a, b, where: str = "config") -> str:
    """'stages[0].unet.base_channels: 16 in the checkpoint, 32 here' for two nested config dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where}: {a!r} in the checkpoint, {b!r} here"


def _remove_dead_writers_temp_dirs(root: Path) -> None:
    """Delete `.step-*.tmp-PID` folders whose writer was killed mid-save (never loaded, but checkpoint-sized)."""
    if os.name != "posix":  # os.kill(pid, 0) only probes on POSIX; elsewhere leave them (they are harmless)
        return
    for tmp in root.glob(".step-*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: "does this process exist?"
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else


def step_checkpoints(root: str | Path) -> list[Path]:
    """The complete step-* directories under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d{8}", p.name))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete step-* directory under root (temporary, half-written ones are never listed)."""
    dirs = step_checkpoints(Path(root))
    return dirs[-1] if dirs else None
