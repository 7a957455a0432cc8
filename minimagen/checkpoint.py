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

Contents: `atomic_write_dir`, `write_json`, `read_json`, `load_safetensors`, `save_cascade`, `load_cascade`.
"""
from __future__ import annotations

import json
import os
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


def load_cascade(cls, directory: str | Path, device=None, text_encoder=None):
    """Rebuild a Cascade from `directory`; EMA weights are loaded when present (and then used for sampling)."""
    import copy

    from .cascade import CascadeConfig

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
    try:
        config = CascadeConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / 'config.json'} describes an invalid cascade: {err}") from err
    cascade = cls(config, text_encoder=text_encoder)
    ema_files = [directory / f"stage{i}.ema.safetensors" for i in range(len(config.stages))]
    missing = [f.name for f in ema_files if not f.is_file()]
    if missing and len(missing) < len(ema_files):  # half-copied: silently sampling raw weights would hide it
        raise CheckpointError(f"{directory} has EMA weights for some stages but not {missing}; re-copy the whole "
                              "checkpoint directory")
    raw_files = [directory / f"stage{i}.safetensors" for i in range(len(config.stages))]
    ema_only = not missing and not any(f.is_file() for f in raw_files)  # save_pretrained(ema_only=True)
    for unet, raw, ema in zip(cascade.unets, raw_files, ema_files):
        _load_into(unet, ema if ema_only else raw)
    if not missing:
        cascade.ema_unets = copy.deepcopy(cascade.unets).requires_grad_(False)
        for unet, f in zip(cascade.ema_unets, ema_files):
            _load_into(unet, f)
    if device is not None:
        cascade.to(device)
    return cascade.eval()
