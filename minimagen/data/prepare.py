"""Getting a dataset ready for fast training: images pre-rendered at every stage's size, captions pre-encoded.

Two costs must stay out of the training loop (they dominated training time in other Imagen ports):
  * the text encoder: every distinct caption is encoded ONCE through the on-disk `EmbeddingCache`, then the
    encoder is dropped; a step indexes a dense table of embeddings;
  * image decoding/rendering and resizing: every item is rendered (shapes, scenes) or decoded and resized (folders)
    once, at every stage's size, and stored as uint8 tensors ([N, 3, s, s]: 8,000 items at 16+32+128 px
    take 0.4 GB). With `image_store` they live in files mapped into memory instead (`torch.from_file`):
    10,000 items at 1024 px are 31 GB, more than RAM should hold, and under torchrun every rank maps the
    same files (one copy in the OS page cache) instead of rendering its own.

Contents: `TrainingData`, `prepare_training_data`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..embedding_cache import EmbeddingCache, EmbeddingTable
from ..text_encoder import load_text_encoder


@dataclass
class TrainingData:
    images: list[torch.Tensor]   # one [N, 3, s, s] uint8 tensor per stage, base first
    caption_index: torch.Tensor  # [N] long: row of item i's caption in `text`
    text: EmbeddingTable         # distinct captions -> (embeds [C, L, D], mask [C, L])

    def __len__(self) -> int:
        return len(self.caption_index)

    @property
    def num_captions(self) -> int:
        return len(self.text)

    @property
    def embed_dim(self) -> int:
        return self.text.embeds.shape[-1]

    def batch(self, stage: int, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images [B, 3, s, s] float in [0, 1], text_embeds [B, L, D], text_mask [B, L]) for item indices idx.

        On a GPU the gathered batch is copied from pinned (page-locked) memory without blocking, as a
        DataLoader(pin_memory=True) does; uint8 travels (4x less than float) and is converted on the GPU.
        """
        device = torch.device(device)
        images = self.images[stage][idx]                         # [B, 3, s, s] uint8
        embeds, mask = self.text.batch(self.caption_index[idx])  # [B, L, D], [B, L]
        if device.type == "cuda":
            images, embeds, mask = images.pin_memory(), embeds.pin_memory(), mask.pin_memory()
        move = dict(device=device, non_blocking=device.type == "cuda")
        return images.to(**move).float() / 255, embeds.to(**move), mask.to(**move)


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def image_bytes(preset, num_items: int | None = None) -> int:
    """Bytes of the pre-rendered uint8 images of a preset (num_items: the dataset's size if not the preset's)."""
    return (num_items or preset.num_items) * sum(3 * s * s for s in preset.sizes)


def _image_store(store: Path, n: int, sizes: tuple[int, ...], key: dict) -> tuple[list[torch.Tensor], list | None]:
    """File-backed [n, 3, s, s] uint8 tensors in `store`, and the captions if a complete render is there."""
    store.mkdir(parents=True, exist_ok=True)
    index = store / "images.json"
    done = json.loads(index.read_text()) if index.is_file() else {}
    ready = done.get("key") == key
    tensors = [torch.from_file(str(store / f"images_{s}px.u8"), shared=not ready, size=n * 3 * s * s,
                               dtype=torch.uint8).view(n, 3, s, s) for s in sizes]  # [n, 3, s, s] over the file
    return tensors, (done["captions"] if ready else None)


def prepare_training_data(preset, data_dir: str | Path | None = None, seed: int = 0,
                          cache_dir: str | Path = "runs/embedding_cache", encoder=None,
                          progress: bool = True, encoder_device=None,
                          image_store: str | Path | None = None, domain: str | None = None) -> TrainingData:
    """Render/decode every item at every stage size and encode every distinct caption once.

    preset: a RunPreset (sizes, num_items, max_objects, text_encoder, max_length). data_dir: a folder of
    images with captions (see data/folder.py) instead of a built-in domain. encoder: an already
    loaded TextEncoder (else the preset's is loaded, only if some caption is not cached yet).
    encoder_device: where a loaded encoder runs (e.g. "cuda": T5-XXL encodes ~100x faster than on a CPU); it
    is dropped (and the GPU memory freed) as soon as the captions are cached.
    image_store: a folder for file-backed images (reused when it already holds this data's render).
    domain: the built-in data when data_dir is None, "shapes" or "scenes" (see data/domains.py); None takes
    the preset's `domain` field if it has one, else "shapes".
    """
    sizes = tuple(preset.sizes)
    if data_dir is not None and domain is not None:
        raise ValueError(f"pass data_dir (your own images) or domain={domain!r} (built-in data), not both")
    if data_dir is not None:
        from .folder import ImageCaptionFolder
        dataset = ImageCaptionFolder(data_dir, image_size=sizes)
    else:
        from .domains import load_domain
        domain = domain or getattr(preset, "domain", "shapes")
        dataset = load_domain(domain).dataset(size=preset.num_items, image_sizes=sizes, seed=seed, split="train",
                                              max_objects=preset.max_objects)
    n = len(dataset)
    captions = None
    if image_store is None:
        images = [torch.empty((n, 3, s, s), dtype=torch.uint8) for s in sizes]
    else:
        key = {"data": str(Path(data_dir).resolve()) if data_dir else domain, "n": n, "sizes": list(sizes),
               "seed": seed, "max_objects": preset.max_objects}
        images, captions = _image_store(Path(image_store), n, sizes, key)
    if captions is None:  # render (or decode) now
        captions = []
        for i in tqdm(range(n), desc="preparing images", disable=not progress, mininterval=2):
            item = dataset[i]
            for k, s in enumerate(sizes):
                images[k][i] = _to_uint8(item["images"][s])
            captions.append(item["caption"])
        if image_store is not None:  # mark the render complete (atomic: a killed render is redone)
            tmp = Path(image_store) / f".images.json.tmp-{os.getpid()}"
            tmp.write_text(json.dumps({"key": key, "captions": captions}))
            os.replace(tmp, Path(image_store) / "images.json")

    cache = EmbeddingCache(cache_dir, encoder.name if encoder else preset.text_encoder, preset.max_length)
    if cache.missing(captions):
        loaded_here = encoder is None
        if loaded_here:  # load the encoder only when something is new, and let it go afterwards
            encoder = load_text_encoder(preset.text_encoder, max_length=preset.max_length, device=encoder_device)
        cache.add(captions, encoder)
        if loaded_here:
            del encoder  # off the GPU before the U-Nets need the memory
            if encoder_device is not None and torch.device(encoder_device).type == "cuda":
                torch.cuda.empty_cache()
    table = cache.as_tensors(list(dict.fromkeys(captions)))
    return TrainingData(images=images, caption_index=table.rows_of(captions), text=table)
