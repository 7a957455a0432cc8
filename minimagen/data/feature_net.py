"""The small domain network whose features the fidelity metric (fidelity.py) compares, and its domains.

Feature net (`FeatureNet`): images are first resized to `input_size` x `input_size` (32 px for the shipped
nets) by ONE rule, `resize_for_features` (antialiased bilinear: a 128-px image is averaged down, a 16-px
image interpolated up; the training renders at 16 / 32 / 64 px go through the same function). The feature
vector (feature_dim = 4 * 32 + 128 = 256 numbers) has two parts:
  low-level statistics (4 x 32): per channel, the mean and std over positions of the first conv's raw
      responses and of its normalised activations: colour, contrast, edge and texture energy, which noise,
      blur, tints and saturation change. Without them the FD did not see noise up to sigma = 0.1 (the
      attribute layer is, usefully for its task, blind to it; GroupNorm divides contrast out of later layers);
  semantic layer (128): after three stages of [conv 3x3 -> GroupNorm -> SiLU -> conv 3x3 stride 2 ->
      GroupNorm -> SiLU] (32 -> 4 px), a linear layer over the whole 4 x 4 map (a learned global pooling:
      average pooling would throw away *where* objects are, which captions name); the heads read it.
Every feature is divided by its std on real 32-px renders (`feature_std`, set after training), so no part
dominates by scale and FD is in units of "one feature's variance".

Domains are pluggable (`FeatureDomain`, `register_feature_domain`): a name, the attribute list, and a
function that renders a labelled random batch. Built in, both by `slot_feature_domain` (one label column
per (slot, attribute), class 0 = empty slot): "shapes" (colour / shape / size in each of the 9 grid cells)
and "scenes" (colour / shape / size / material in each of the 3 slots, data/scenes.py). Weights ship as
minimagen/assets/feature_net_{domain}.safetensors (`python -m minimagen.tools.train_feature_net --domain D`).

Map: FeatureDomain, register_feature_domain / get_feature_domain, slot_feature_domain, the shapes and
scenes domains, reference_images -> FeatureNetConfig, resize_for_features, FeatureNet -> weights_path,
save_feature_net (loading: fidelity.FeatureExtractor.from_pretrained).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ASSETS = Path(__file__).resolve().parents[1] / "assets"


# ---------------------------------------------------------------------------------------------------
# Domains: how to render a labelled random batch
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureDomain:
    name: str                                  # e.g. "shapes"; the weights file is feature_net_{name}.safetensors
    attributes: tuple[tuple[str, int], ...]    # (label name, number of classes), one per label column
    render_batch: Callable                     # (n, image_size, np.random.Generator) -> (images [n, 3, s, s]
                                               #   float32 in [0, 1], labels [n, len(attributes)] int64)
    train_sizes: tuple[int, ...] = (16, 32, 64)  # render resolutions drawn in training (all resized alike)


_DOMAINS: dict[str, Callable[[], FeatureDomain]] = {}


def register_feature_domain(name: str, factory: Callable[[], FeatureDomain]) -> None:
    """Make `get_feature_domain(name)` call `factory()` (lazily: a domain's module is imported only when used)."""
    _DOMAINS[name] = factory


def get_feature_domain(name: str) -> FeatureDomain:
    if name not in _DOMAINS:
        raise ValueError(f"domain={name!r} is not one of {tuple(_DOMAINS)}; add one with register_feature_domain")
    return _DOMAINS[name]()


def slot_feature_domain(name: str, slots: tuple[str, ...], vocabulary: dict[str, tuple], draw_scene: Callable,
                        render: Callable) -> FeatureDomain:
    """A domain whose scenes put objects in named slots: label column (slot, attribute) holds 1 + the index of
    the attribute's value for the object in that slot, 0 when the slot is empty. draw_scene(rng) -> a spec
    with .objects (each with .position and the vocabulary's attributes); render(spec, image_size) -> [3, s, s]."""
    columns = tuple((f"{slot} {attr}", len(values) + 1) for slot in slots for attr, values in vocabulary.items())

    def render_batch(n: int, image_size: int, rng: np.random.Generator):
        images = torch.empty(n, 3, image_size, image_size)
        labels = torch.zeros(n, len(columns), dtype=torch.long)          # [n, slots * attributes], 0 = empty
        for i in range(n):
            spec = draw_scene(rng)
            images[i] = render(spec, image_size)
            for obj in spec.objects:
                first = len(vocabulary) * slots.index(obj.position)     # first column of this slot
                for j, (attr, values) in enumerate(vocabulary.items()):
                    labels[i, first + j] = values.index(getattr(obj, attr)) + 1
        return images, labels

    return FeatureDomain(name, columns, render_batch)


def shapes_feature_domain() -> FeatureDomain:
    """Captioned shapes: colour (7 classes with "none"), shape (5) and size (3) in each of the 9 grid cells;
    scenes of split "all", half of them two objects."""
    from minimagen.data import shapes
    vocabulary = {"color": tuple(shapes.COLORS), "shape": shapes.SHAPES, "size": shapes.SIZES}
    return slot_feature_domain("shapes", shapes.POSITIONS, vocabulary,
                               lambda rng: shapes.random_scene(rng, split="all"), shapes.render_scene)


def scenes_feature_domain() -> FeatureDomain:
    """Shaded 3-D scenes: colour (7), shape (5), size (3) and material (3) in each of the 3 slots; 1-3 objects."""
    from minimagen.data import scenes
    vocabulary = {"color": tuple(scenes.COLORS), "shape": scenes.SHAPES, "size": scenes.SIZES,
                  "material": scenes.MATERIALS}
    return slot_feature_domain("scenes", scenes.POSITIONS, vocabulary,
                               lambda rng: scenes.random_scene(rng, split="all", max_objects=3), scenes.render_scene)


register_feature_domain("shapes", shapes_feature_domain)
register_feature_domain("scenes", scenes_feature_domain)


def reference_images(domain: str, n: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """n real renders [n, 3, image_size, image_size] of random scenes of `domain`: the reference set."""
    return get_feature_domain(domain).render_batch(n, image_size, np.random.default_rng(seed))[0]


# ---------------------------------------------------------------------------------------------------
# The feature network
# ---------------------------------------------------------------------------------------------------
@dataclass
class FeatureNetConfig:
    num_classes: tuple[int, ...]               # classes of each attribute head (from FeatureDomain.attributes)
    input_size: int = 32                       # every image is resized to this side first (resize_for_features)
    channels: tuple[int, ...] = (32, 64, 128)  # width of each stage; each stage halves the side: 32 -> 4
    semantic_dim: int = 128                    # width of the layer the attribute heads read
    groups: int = 8                            # GroupNorm groups (batch-independent: train = eval)

    def __post_init__(self):
        self.num_classes, self.channels = tuple(self.num_classes), tuple(self.channels)
        if self.input_size % 2 ** len(self.channels):
            raise ValueError(f"input_size {self.input_size} is not divisible by 2**{len(self.channels)} "
                             f"({len(self.channels)} stride-2 stages); use a multiple of {2 ** len(self.channels)}")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"channels {self.channels} must all be divisible by groups={self.groups}")
        if not self.num_classes or min(self.num_classes) < 2:
            raise ValueError(f"num_classes={self.num_classes}: every attribute needs >= 2 classes")

    @property
    def feature_dim(self) -> int:
        return 4 * self.channels[0] + self.semantic_dim  # low-level statistics + semantic layer


def resize_for_features(images: torch.Tensor, size: int) -> torch.Tensor:
    """THE resize rule of the metric: [N, 3, H, H] -> [N, 3, size, size], antialiased bilinear (a no-op when
    H == size). Used at training and at evaluation alike, so the two never prepare images differently."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images have shape {tuple(images.shape)}; pass square RGB batches [N, 3, H, H]")
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class FeatureNet(nn.Module):
    def __init__(self, config: FeatureNetConfig):
        super().__init__()
        self.config = config
        c0 = config.channels[0]
        self.stem = nn.Conv2d(3, c0, 3, padding=1)                   # the filter bank the statistics read
        self.stem_act = nn.Sequential(nn.GroupNorm(config.groups, c0), nn.SiLU())
        layers, c_in = [nn.Conv2d(c0, c0, 3, stride=2, padding=1), nn.GroupNorm(config.groups, c0), nn.SiLU()], c0
        for c in config.channels[1:]:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(config.groups, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GroupNorm(config.groups, c), nn.SiLU()]
            c_in = c
        self.trunk = nn.Sequential(*layers)
        side = config.input_size // 2 ** len(config.channels)
        self.to_semantic = nn.Linear(c_in * side * side, config.semantic_dim)  # learned global pooling
        self.heads = nn.Linear(config.semantic_dim, sum(config.num_classes))  # all attribute logits at once
        self.register_buffer("feature_std", torch.ones(config.feature_dim))  # set after training (calibrate)
        self.register_buffer("reference_spread", torch.ones(()))  # mean pairwise distance, random real renders

    def semantic_and_stats(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(semantic layer [N, semantic_dim], low-level statistics [N, 4 c0]) of images [N, 3, H, H] in [0, 1]."""
        x = resize_for_features(images, self.config.input_size) * 2.0 - 1.0  # [0, 1] -> [-1, 1]
        r = self.stem(x)                                                     # raw responses [N, c0, S, S]
        a = self.stem_act(r)                                                 # normalised activations, same
        stats = torch.cat([r.mean((2, 3)), r.std((2, 3)), a.mean((2, 3)), a.std((2, 3))], 1)  # [N, 4 c0]
        h = self.trunk(a)                                                    # [N, C, side, side]
        return self.to_semantic(h.flatten(1)), stats                         # [N, C * side^2] -> [N, sem]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every attribute: a list of [N, num_classes[k]]."""
        semantic, _ = self.semantic_and_stats(images)
        return list(self.heads(semantic).split(self.config.num_classes, dim=1))

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        semantic, stats = self.semantic_and_stats(images)
        return torch.cat([stats, semantic], 1)                              # [N, feature_dim]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.raw_features(images) / self.feature_std                 # unit variance on real renders


# ---------------------------------------------------------------------------------------------------
# Weights on disk
# ---------------------------------------------------------------------------------------------------
def weights_path(domain: str) -> Path:
    return ASSETS / f"feature_net_{domain}.safetensors"


def save_feature_net(net: FeatureNet, path, domain: str, extra: dict | None = None) -> None:
    from safetensors.torch import save_file
    meta = {"domain": domain, "config": json.dumps(asdict(net.config)), "extra": json.dumps(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)
