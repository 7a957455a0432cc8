"""Loading a pretrained text encoder safely: find its files, check them, fingerprint them.

`text_encoder.py` loads T5 / BERT checkpoints with transformers. Some broken checkpoints load there without
a word, or fail with an error that names no file; the checks here run *before* transformers sees the files
(and on the tokenizer it returns), so that each case becomes one clear `TextEncoderNotAvailableError`:

    no tokenizer file at all       transformers 5 builds a default tokenizer that maps every word to <unk>
                                   (385 distinct captions became 10 distinct embeddings)
    a tokenizer that maps "a red circle on the left" to <unk>: the same, however it came about
    spiece.model without tokenizer.json, and no sentencepiece + protobuf
                                   transformers fails with "`tiktoken` is required", the wrong package
    a truncated .safetensors file  safetensors raises "incomplete metadata" and names no file

The embedding cache is keyed by a fingerprint of what determines the embeddings (weights, config,
tokenizer files), so it never serves embeddings made by other files under the same encoder name. It is a
SHA-256 over, per file, its name, its size, and
    *.safetensors  the whole header (every tensor's name, dtype, shape, offsets) + the first and last
                   4 KiB of every tensor's bytes: ~2 MB read for T5-XXL instead of 19 GB. Retraining,
                   fine-tuning, another checkpoint or a truncated copy all change it; a hand edit of a
                   few values in the middle of one tensor would not.
    other files    their full SHA-256 (tokenizer files are small; a pickled pytorch_model.bin is hashed
                   once per process and remembered by (path, size, mtime)).

Map: TextEncoderNotAvailableError -> hub_offline / hf_cache_dir / local_snapshot -> file checks
(has_tokenizer_files, needs_sentencepiece, weight_files, safetensors_problem, is_complete) ->
folder_fingerprint / state_fingerprint (encoders that exist only in memory) -> check_files /
check_tokenizer (raise the error) -> quiet_transformers_progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
from pathlib import Path

import torch

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt", "vocab.json",
                   "merges.txt", "sentencepiece.bpe.model", "special_tokens_map.json", "added_tokens.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"  # sharded checkpoints: {"weight_map": {tensor: file}}
PLAIN_ENGLISH = "a red circle on the left"  # every tokenizer of an English encoder knows these words
SAMPLE_BYTES = 4096  # bytes hashed from each end of every tensor
_sha256_memo: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256 of a whole file


class TextEncoderNotAvailableError(ValueError):
    """The requested encoder cannot be used: not in the local cache and not downloadable (the default
    message), or its files are broken (`reason` says how, `fix` what to do)."""

    def __init__(self, name: str, offline: bool = False, cache_dir: str | None = None, *,
                 reason: str | None = None, fix: str | None = None):
        if reason is not None:
            super().__init__(f"text encoder {name!r} is not available: {reason}. To fix: {fix}")
            return
        where = cache_dir or "the default Hugging Face cache (~/.cache/huggingface/hub)"
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if offline
               else "downloading it from the Hugging Face Hub failed (no network, or a wrong name? set "
                    "HF_HUB_OFFLINE=1 to skip the download attempt and its retries)")
        super().__init__(
            f"text encoder {name!r} is not available: it is not in {where}, and {why}. "
            f"To fix: on a machine with internet run `huggingface-cli download {name}` "
            f"(or `hf download {name}`, or `T5EncoderModel.from_pretrained({name!r})`) and copy the "
            f"cache here; or save the model with save_pretrained into a directory and pass that "
            f"directory as the name. minimagen does not substitute another encoder "
            f"(the offline default is 'all-MiniLM-L6-v2')."
        )


def hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported.
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # the second: older name


def hf_cache_dir() -> str | None:
    """The hub cache folder the environment asks for now, or None for the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def local_snapshot(name: str, cache_dir: str | None = None) -> Path | None:
    """The folder of Hub model `name` in the local Hugging Face cache (revision "main"), or None.

    Reads only the disk (huggingface_hub's cache layout: models--org--name/snapshots/<commit>/).
    """
    from huggingface_hub import try_to_load_from_cache  # only when a Hub name is given

    try:
        path = try_to_load_from_cache(name, CONFIG_FILE, cache_dir=cache_dir)
    except ValueError:  # not a valid repo id (huggingface_hub's HFValidationError is a ValueError)
        return None
    return Path(path).parent if isinstance(path, str) else None


def has_tokenizer_files(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def needs_sentencepiece(folder: Path) -> bool:
    """True for a slow sentencepiece tokenizer only (spiece.model and no tokenizer.json): transformers
    then converts it with the packages sentencepiece and protobuf."""
    return (folder / "spiece.model").is_file() and not (folder / "tokenizer.json").is_file()


def missing_sentencepiece_packages() -> list[str]:
    """Which of the PyPI packages sentencepiece, protobuf cannot be imported."""
    missing = []
    for module, package in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would read: the shards of a sharded safetensors checkpoint, else
    every *.safetensors, else the pickled pytorch_model*.bin (transformers prefers safetensors)."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))


def _safetensors_header(path: Path) -> tuple[bytes, dict]:
    """(raw header bytes, parsed header) of a safetensors file: 8 bytes little-endian n, then n bytes JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"it is only {len(head)} bytes long")
        n = int.from_bytes(head, "little")
        if n > os.path.getsize(path) - 8:
            raise ValueError(f"it is truncated: its header says {n} bytes of metadata, but the file has "
                             f"{os.path.getsize(path) - 8} bytes after the length field")
        raw = f.read(n)
    try:
        return raw, json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"its header is not valid JSON ({err})") from None


def safetensors_problem(path: Path) -> str | None:
    """None if `path` is a complete safetensors file, else what is wrong with it (in words)."""
    try:
        raw, header = _safetensors_header(path)
    except (OSError, ValueError) as err:
        return str(err)
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    expected = 8 + len(raw) + max(ends, default=0)  # length field + header + tensor bytes
    found = os.path.getsize(path)
    if found < expected:
        return f"it is truncated: {found:,} bytes, but its header describes {expected:,}"
    return None


def is_complete(folder: Path) -> bool:
    """config.json, every weight file and some tokenizer file are there (a copy loadable offline)."""
    weights = weight_files(folder) if (folder / CONFIG_FILE).is_file() else []
    return bool(weights) and all(w.is_file() for w in weights) and has_tokenizer_files(folder)


def _sha256_of_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _sha256_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _sha256_memo[key] = digest.hexdigest()
    return _sha256_memo[key]


def _sampled_safetensors_hash(path: Path) -> str:
    """Header + both ends of every tensor's bytes (see the module docstring)."""
    raw, header = _safetensors_header(path)
    digest = hashlib.sha256(raw)
    with open(path, "rb") as f:
        for name in sorted(k for k in header if k != "__metadata__"):
            begin, end = (8 + len(raw) + int(o) for o in header[name]["data_offsets"])
            for start in sorted({begin, max(begin, end - SAMPLE_BYTES)}):
                f.seek(start)
                digest.update(f.read(min(SAMPLE_BYTES, end - start)))
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 (hex) of what in `folder` determines the embeddings: config, weights, tokenizer files."""
    folder = Path(folder)
    files = [folder / CONFIG_FILE, folder / SAFETENSORS_INDEX, *weight_files(folder),
             *(folder / f for f in TOKENIZER_FILES)]
    digest = hashlib.sha256()
    for path in sorted({f for f in files if f.is_file()}):
        content = (_sampled_safetensors_hash(path) if path.suffix == ".safetensors"
                   else _sha256_of_file(path))
        digest.update(f"{path.name}\n{path.stat().st_size}\n{content}\n".encode())
    return digest.hexdigest()


def state_fingerprint(model, tokenizer) -> str:
    """The same idea for an encoder that exists only in memory: every tensor's name, dtype and shape and
    its first and last 1,024 values, plus the tokenizer's class, vocabulary and special tokens."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)  # [numel]
        ends = flat if flat.numel() <= 2048 else torch.cat([flat[:1024], flat[-1024:]])  # [<= 2048]
        digest.update(f"{name}\n{tensor.dtype}\n{tuple(tensor.shape)}\n".encode())
        digest.update(ends.cpu().double().numpy().tobytes())  # float64 holds bf16/fp16/fp32/int values exactly
    vocab = sorted(tokenizer.get_vocab().items())
    digest.update(json.dumps([type(tokenizer).__name__, vocab, tokenizer.all_special_tokens]).encode())
    return digest.hexdigest()


def how_to_get_again(name: str) -> str:
    """How to get a complete copy of encoder `name` again (a folder, or a Hub name)."""
    if os.path.isdir(name):
        return (f"write the folder again with model.save_pretrained({name!r}) and "
                f"tokenizer.save_pretrained({name!r}), or copy it again, completely, from where it came from")
    return f"download the complete model again (`hf download {name}`; an interrupted download leaves short files)"


def check_files(name: str, folder: Path) -> None:
    """Refuse, naming the file and the fix, what transformers would load wrongly or fail on obscurely."""
    if not has_tokenizer_files(folder):
        raise TextEncoderNotAvailableError(
            name, reason=f"{folder} has weights but no tokenizer files (none of "
                         f"{', '.join(TOKENIZER_FILES[:4])}, ...); transformers would build a default "
                         f"tokenizer that maps every word to <unk>",
            fix=f"put the model's own tokenizer files beside its weights; {how_to_get_again(name)}")
    missing = missing_sentencepiece_packages() if needs_sentencepiece(folder) else []
    if missing:
        raise TextEncoderNotAvailableError(
            name, reason=f"its tokenizer is {folder / 'spiece.model'} (no tokenizer.json), which needs the "
                         f"packages sentencepiece and protobuf; {' and '.join(missing)} cannot be imported "
                         f"(transformers would ask for `tiktoken` instead, which does not help)",
            fix="`pip install sentencepiece protobuf` (both are in requirements.txt)")
    for path in weight_files(folder):
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
        if problem:
            raise TextEncoderNotAvailableError(
                name, reason=f"the weight file {path} is broken: {problem}", fix=how_to_get_again(name))


def check_tokenizer(name: str, tokenizer) -> None:
    """Refuse a tokenizer that maps plain English words to its unknown token: transformers builds such a
    default tokenizer, without a warning, for a checkpoint whose tokenizer files are missing."""
    unk = tokenizer.unk_token_id
    ids = tokenizer(PLAIN_ENGLISH)["input_ids"]
    if unk is not None and unk in ids:
        raise TextEncoderNotAvailableError(
            name, reason=f"its tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) maps "
                         f"{ids.count(unk)} of the {len(ids)} tokens of {PLAIN_ENGLISH!r} to the unknown token "
                         f"{tokenizer.unk_token!r}, so every caption would encode to nearly the same embeddings "
                         f"(usually: the tokenizer files are missing and transformers built an empty default)",
            fix=f"use the model's own tokenizer (tokenizer.json, or spiece.model for T5, or vocab.txt for "
                f"BERT); {how_to_get_again(name)}")


@contextlib.contextmanager
def quiet_transformers_progress():
    """Switch off transformers' "Loading weights" / "Writing model shards" bars, and restore the setting
    afterwards. huggingface_hub's download bars stay as they were (a big download should show them)."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    was_on, hub_was_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # this switches huggingface_hub's bars off as well ...
    if not hub_was_off:
        enable_progress_bars()  # ... so they are switched back on
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()  # also enables huggingface_hub's: undo if they were off
            if hub_was_off:
                from huggingface_hub.utils import disable_progress_bars
                disable_progress_bars()
