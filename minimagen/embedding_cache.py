"""Embedding cache: run the frozen text encoder once per caption and keep the result on disk.

Imagen's text encoder is frozen (paper section 2.1), so a caption's embeddings never change during
training. Encoding them on the fly dominated training time in the existing ports (REFERENCE.md);
here they are computed once, stored, and read back as tensors: the training loop never calls the
encoder, and the encoder need not even be in memory.

On-disk layout, one folder per (encoder name, max_length, encoder fingerprint), so that changing any of
them can never return stale embeddings (that *is* the invalidation rule). The fingerprint hashes what
determines the embeddings: the encoder's weights, config and tokenizer files and its dtype
(`text_encoder.encoder_fingerprint`; see text_encoder_files.py for what is read). Embeddings made by a
broken encoder (say, without its tokenizer files) are therefore not served after the encoder is fixed.

    <directory>/<encoder-slug>__len<max_length>__<hash8>/
        index.json              {"format": 2, "encoder_name", "max_length", "fingerprint", "embed_dim",
                                 "shards": [file, ...], "captions": {caption: [shard, start, n]}}
        shard_00000.safetensors {"tokens": [T, D] float32}: the n real tokens of many captions,
                                 concatenated; caption c is tokens[start : start + n]

Only real tokens are stored (padding is rebuilt on read), which matters at scale: T5-XL embeddings of
10.5 M captions padded to 256 tokens would be ~3 TB. Every file is written under a temporary name and
moved into place with os.replace (atomic): a shard first, then the index, so a crash leaves at most an
unused shard, never a broken index. Reading uses only json and safetensors: no pickle, no code runs.
One writer at a time per folder.

Map: `EmbeddingCache` (.encode / .add / .get / `in` / len / .as_tensors) -> `EmbeddingTable` (dense
in-memory tensors that a training loop indexes by row).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from minimagen.text_encoder import encoder_fingerprint, shorten, validate_captions

INDEX_FORMAT = 2  # bump when the layout changes; older folders are then refused, never misread


class CaptionNotCachedError(KeyError):
    """Some requested captions are not in the cache."""

    def __init__(self, missing: list[str], cache_path: Path):
        shown = ", ".join(repr(shorten(c)) for c in missing[:3]) + (" ..." if len(missing) > 3 else "")
        self.message = (f"{len(missing)} caption(s) not in the embedding cache {cache_path}: {shown}. "
                        f"Encode them first with cache.encode(captions, encoder) or "
                        f"cache.add(captions, encoder)")
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would print the repr of the message, quotes and all
        return self.message


def cache_folder_name(encoder_name: str, max_length: int, fingerprint: str) -> str:
    """Readable and collision-free: a slug of the name plus 8 hex digits of a hash of the exact key."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder_name).strip("-.")[:60] or "encoder"
    digest = hashlib.sha256(f"{encoder_name}\n{max_length}\n{fingerprint}".encode()).hexdigest()[:8]
    return f"{slug}__len{max_length}__{digest}"


def _atomic_write(path: Path, write) -> None:
    """write(tmp_path), then rename tmp_path -> path in one step (os.replace is atomic)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # only when write or replace failed; the error still propagates
            tmp.unlink()


@dataclass
class EmbeddingTable:
    """Embeddings of a fixed caption list as dense tensors, for fast indexing in a training loop.

    Row i holds captions[i], padded to the longest caption of the table; `batch(rows)` trims a batch
    back to its own longest caption, so it equals what the encoder would return for that batch.
    Memory: N * L * D * 4 bytes (e.g. 10,000 captions x 32 tokens x 384 = 0.5 GB).
    """

    captions: list[str]  # row i <-> captions[i]
    embeds: torch.Tensor  # [N, L, D] float32, zero where mask is False
    mask: torch.Tensor  # [N, L] bool, True on real tokens (a prefix of each row)
    rows: dict[str, int] = field(init=False, repr=False)  # caption -> row

    def __post_init__(self):
        self.rows = {caption: i for i, caption in enumerate(self.captions)}

    def __len__(self) -> int:
        return len(self.captions)

    def rows_of(self, captions: list[str]) -> torch.Tensor:
        """Row indices [B] (long) of `captions`; a caption not in the table raises KeyError."""
        return torch.tensor([self.rows[c] for c in validate_captions(captions)], dtype=torch.long)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, L_b, D], mask [B, L_b]) for row indices [B], L_b = longest caption in the batch."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[rows]  # [B, L]
        longest = int(mask.sum(1).max()) if len(rows) else 0
        return self.embeds[rows, :longest], mask[:, :longest]  # [B, L_b, D], [B, L_b]

    def to(self, device) -> "EmbeddingTable":
        return EmbeddingTable(self.captions, self.embeds.to(device), self.mask.to(device))


class EmbeddingCache:
    """Text embeddings of one encoder (name and fingerprint) at one max_length, stored under `directory`.

    cache = EmbeddingCache.for_encoder("runs/embeddings", encoder)
    embeds, mask = cache.encode(captions, encoder)   # encodes only captions not seen before
    embeds, mask = EmbeddingCache("runs/embeddings", encoder_name, max_length).get(captions)
                                                      # later, without loading the encoder
    fingerprint: encoder.fingerprint; by default computed from the encoder's files on this machine
    (`encoder_fingerprint(encoder_name)`, float32), which loads nothing.
    """

    def __init__(self, directory: str | os.PathLike, encoder_name: str, max_length: int,
                 batch_size: int = 64, shard_captions: int = 4096, fingerprint: str | None = None):
        if not isinstance(encoder_name, str) or not encoder_name:
            raise ValueError(f"encoder_name must be a non-empty str such as 'all-MiniLM-L6-v2' "
                             f"(use encoder.name); got {encoder_name!r}")
        for field_name, value in [("max_length", max_length), ("batch_size", batch_size),
                                  ("shard_captions", shard_captions)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive int; got {value!r}")
        if fingerprint is None:
            fingerprint = encoder_fingerprint(encoder_name)
            if fingerprint is None:
                raise ValueError(
                    f"EmbeddingCache: cannot fingerprint text encoder {encoder_name!r}: it is not a built-in "
                    f"name, a directory, or a model complete in the local Hugging Face cache. Load it first "
                    f"and open EmbeddingCache.for_encoder(directory, encoder), or pass fingerprint=")
        self.encoder_name = encoder_name  # key part 1: which encoder made the embeddings
        self.max_length = max_length  # key part 2: where captions were truncated
        self.fingerprint = fingerprint  # key part 3: the weights, tokenizer and dtype behind the name
        self.batch_size = batch_size  # captions per encoder call when filling the cache
        self.shard_captions = shard_captions  # captions per shard file (bounds memory while adding)
        self.path = Path(directory) / cache_folder_name(encoder_name, max_length, fingerprint)
        self._index = self._read_index()
        self._shards: dict[int, torch.Tensor] = {}  # shard number -> tokens [T, D], loaded lazily

    @classmethod
    def for_encoder(cls, directory: str | os.PathLike, encoder, **kwargs) -> "EmbeddingCache":
        return cls(directory, encoder.name, encoder.max_length, fingerprint=_fingerprint_of(encoder), **kwargs)

    # ---- reading ------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        index_file = self.path / "index.json"
        if not index_file.exists():  # a new cache: nothing is written until the first add
            return {"format": INDEX_FORMAT, "encoder_name": self.encoder_name, "max_length": self.max_length,
                    "fingerprint": self.fingerprint, "embed_dim": None, "shards": [], "captions": {}}
        index = json.loads(index_file.read_text(encoding="utf-8"))
        expected = (INDEX_FORMAT, self.encoder_name, self.max_length, self.fingerprint)
        found = tuple(index.get(k) for k in ("format", "encoder_name", "max_length", "fingerprint"))
        if found != expected:
            raise ValueError(f"{index_file} holds (format, encoder_name, max_length, fingerprint) = {found}, "
                             f"expected {expected}; delete the folder {self.path} to rebuild it")
        return index

    def __len__(self) -> int:
        return len(self._index["captions"])

    def __contains__(self, caption: str) -> bool:
        return caption in self._index["captions"]

    @property
    def embed_dim(self) -> int | None:
        """D, or None while the cache is empty."""
        return self._index["embed_dim"]

    def captions(self) -> list[str]:
        """Every cached caption, in the order they were added."""
        return list(self._index["captions"])

    def missing(self, captions: list[str]) -> list[str]:
        """The captions not cached yet, each once, in first-seen order."""
        return [c for c in dict.fromkeys(validate_captions(captions)) if c not in self]

    def _shard(self, number: int) -> torch.Tensor:
        if number not in self._shards:
            self._shards[number] = load_file(self.path / self._index["shards"][number])["tokens"]
        return self._shards[number]

    def get(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, L, D] float32, mask [B, L] bool) on the CPU, L = longest requested caption.

        Raises CaptionNotCachedError (a KeyError) naming the captions that are not cached.
        """
        captions = validate_captions(captions)
        missing = self.missing(captions)
        if missing:
            raise CaptionNotCachedError(missing, self.path)
        entries = [self._index["captions"][c] for c in captions]  # [shard, start, n] each
        longest = max(n for _, _, n in entries)
        embeds = torch.zeros(len(captions), longest, self.embed_dim)  # [B, L, D], padding stays 0
        mask = torch.zeros(len(captions), longest, dtype=torch.bool)  # [B, L]
        for row, (shard, start, n) in enumerate(entries):
            embeds[row, :n] = self._shard(shard)[start:start + n].float()  # [n, D]
            mask[row, :n] = True
        return embeds, mask

    def as_tensors(self, captions: list[str] | None = None) -> EmbeddingTable:
        """Dense in-memory table of `captions` (default: every cached caption, duplicates dropped)."""
        captions = list(dict.fromkeys(self.captions() if captions is None else captions))
        embeds, mask = self.get(captions)  # [N, L, D], [N, L]
        return EmbeddingTable(captions, embeds, mask)

    # ---- writing ------------------------------------------------------------------------------
    def _check_encoder(self, encoder) -> None:
        found = (getattr(encoder, "name", None), getattr(encoder, "max_length", None), _fingerprint_of(encoder))
        if found != (self.encoder_name, self.max_length, self.fingerprint):
            raise ValueError(
                f"this cache holds embeddings of {self.encoder_name!r} at max_length {self.max_length} "
                f"(fingerprint {self.fingerprint[:12]}), but the encoder is {found[0]!r} at max_length "
                f"{found[1]} (fingerprint {found[2][:12]}); open EmbeddingCache.for_encoder(directory, "
                f"encoder) for that encoder (its own folder)")

    def add(self, captions: list[str], encoder, progress: bool = False) -> int:
        """Encode the captions that are not cached yet and store them; returns how many were new.

        progress: show a tqdm bar (captions encoded so far). The encoder's `check_captions`, when it has
        one, sees all new captions first: its warnings (captions cut at max_length, ...) count them all.
        """
        todo = self.missing(captions)
        if todo:
            self._check_encoder(encoder)
            if hasattr(encoder, "check_captions"):
                encoder.check_captions(todo)
        with tqdm(total=len(todo), desc=f"encoding captions ({self.encoder_name})", unit="caption",
                  disable=not progress or not todo, mininterval=2) as bar:
            for begin in range(0, len(todo), self.shard_captions):
                self._add_shard(todo[begin:begin + self.shard_captions], encoder, bar)
        return len(todo)

    def encode(self, captions: list[str], encoder=None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """get(captions), first encoding (with `encoder`) whichever captions are not cached."""
        missing = self.missing(captions)
        if missing and encoder is None:
            raise CaptionNotCachedError(missing, self.path)
        if missing:
            self.add(missing, encoder, progress=progress)
        return self.get(captions)

    def _add_shard(self, captions: list[str], encoder, bar) -> None:
        number = len(self._index["shards"])
        pieces, entries, start = [], {}, 0
        for begin in range(0, len(captions), self.batch_size):
            chunk = captions[begin:begin + self.batch_size]
            embeds, mask = encoder.encode(chunk)  # [b, L, D], [b, L]
            bar.update(len(chunk))
            self._check_embed_dim(embeds.shape[-1])
            for caption, e, m in zip(chunk, embeds, mask):
                n = int(m.sum())
                if not bool(m[:n].all()):
                    raise ValueError(f"encoder {self.encoder_name!r} returned a mask that is not "
                                     f"right-padded for {shorten(caption)!r}; the cache stores real tokens "
                                     f"as a prefix")
                pieces.append(e[:n].detach().to("cpu", torch.float32))  # [n, D]
                entries[caption] = [number, start, n]
                start += n
        tokens = torch.cat(pieces).contiguous()  # [T, D], T = sum of n
        shard_file = f"shard_{number:05d}.safetensors"
        self.path.mkdir(parents=True, exist_ok=True)
        metadata = {"encoder_name": self.encoder_name, "max_length": str(self.max_length),
                    "fingerprint": self.fingerprint}
        _atomic_write(self.path / shard_file,
                      lambda tmp: save_file({"tokens": tokens}, str(tmp), metadata=metadata))
        # the index is updated only after its shard is safely on disk
        index = dict(self._index, shards=self._index["shards"] + [shard_file],
                     captions={**self._index["captions"], **entries})
        _atomic_write(self.path / "index.json",
                      lambda tmp: tmp.write_text(json.dumps(index, ensure_ascii=False), "utf-8"))
        self._index = index
        self._shards[number] = tokens

    def _check_embed_dim(self, width: int) -> None:
        if self._index["embed_dim"] is None:
            self._index["embed_dim"] = int(width)
        elif width != self._index["embed_dim"]:
            raise ValueError(f"encoder returned embeddings of width {width}, but the cache "
                             f"{self.path} holds width {self._index['embed_dim']}")

    def __repr__(self) -> str:
        return (f"EmbeddingCache({str(self.path)!r}, captions={len(self)}, "
                f"embed_dim={self.embed_dim})")


def _fingerprint_of(encoder) -> str:
    fingerprint = getattr(encoder, "fingerprint", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"the encoder {getattr(encoder, 'name', encoder)!r} has no `fingerprint` (a str that "
                         f"changes when its weights or tokenizer change); use load_text_encoder or TextEncoder, "
                         f"or give your encoder object such an attribute")
    return fingerprint
