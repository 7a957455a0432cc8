"""Scenes: a second built-in text-to-image domain, shaded 3-D objects with natural-image statistics.

The captioned shapes (`shapes.py`) make caption following checkable but look nothing like photographs
(97.7 % of their pixel values are 0 or 1). Here every picture is a small still life rendered by
`scenes_render.py`: one to three objects standing in a row on a lit, textured floor. Each object has
  shape     sphere, cube, cylinder, cone                 colour    red, orange, yellow, green, blue, purple
  size      small / large                                material  matte / shiny (a specular highlight)
  position  one of three slots: left, center, right
Two objects stand in the left and right slots, three fill all slots; `relation` says how objects[0]
stands to objects[1] (and objects[1] to objects[2]), "left of" or "right of", which fixes the layout, so
the caption describes the picture completely. The objects of a scene have different colours, so that
binding a colour to the wrong object is visible.

Captions come from many templates and synonyms ("ball", "block", "glossy", "to the left of", ...),
with varying adjective order and optional articles. Some wordings never occur in training captions:
the second half of every WORDS entry ("orb", "metallic", "on the left-hand side", ...) and the held-out
TEMPLATES ("... can be seen on the left", recognisable by HELDOUT_TEMPLATE_MARKERS). The "paraphrase"
prompts use only those (a miniature of DrawBench's rare-words category) and "misspelled" prompts swap or
drop a letter of attribute words (its misspellings). HELD_OUT (colour, shape) pairs never occur in
split="train" ("single_heldout": new combinations of familiar words).

Map: specs (ObjectSpec, SceneSpec) -> wording (WORDS, TEMPLATES, caption_for, misspell) -> random_scene
-> ScenesDataset -> fixed_prompts -> preview_grid. Rendering: scenes_render; scoring: scenes_scoring.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .scenes_render import (COLORS, MATERIALS, POSITIONS, SHAPES, SIZES, pixel_statistics,  # noqa: F401
                            render_scene)
from .shapes import _check, _numpy_rng, collate  # noqa: F401  (same generator handling and batching as shapes)

RELATIONS = ("left of", "right of")            # how objects[0] stands to objects[1] (and [1] to [2])
LAYOUT = {2: {"left of": ("left", "right"), "right of": ("right", "left")},
          3: {"left of": ("left", "center", "right"), "right of": ("right", "center", "left")}}
INVERSE = {"left of": "right of", "right of": "left of"}
HELD_OUT = frozenset({("red", "cylinder"), ("green", "cube"), ("blue", "sphere"), ("yellow", "cone")})
SPLITS = ("train", "heldout", "all")           # heldout: every scene holds at least one HELD_OUT pair
assert all(c in COLORS and s in SHAPES for c, s in HELD_OUT), "HELD_OUT must use the vocabulary"


@dataclass(frozen=True)
class ObjectSpec:
    shape: str     # one of SHAPES
    color: str     # one of COLORS
    size: str      # one of SIZES
    material: str  # one of MATERIALS
    position: str  # one of POSITIONS (slots "left", "center", "right")

    def __post_init__(self):
        for name, allowed in (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("material", MATERIALS),
                              ("position", POSITIONS)):
            _check(name, getattr(self, name), allowed)


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]  # one to three objects
    relation: str | None = None      # objects[0] to objects[1] (and [1] to [2]); None for one object

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))  # accept a list, store a tuple
        n = len(self.objects)
        if n not in (1, 2, 3):
            raise ValueError(f"objects has {n} entries; a scene holds 1, 2 or 3 ObjectSpecs")
        if n == 1:
            if self.relation is not None:
                raise ValueError(f"relation={self.relation!r} needs two or three objects; use relation=None")
            return
        _check("relation", self.relation, RELATIONS)
        positions = tuple(o.position for o in self.objects)
        if positions != LAYOUT[n][self.relation]:
            raise ValueError(f"relation {self.relation!r} places {n} objects at {LAYOUT[n][self.relation]}, "
                             f"got positions {positions}")
        if len({o.color for o in self.objects}) < n:
            raise ValueError(f"colours {[o.color for o in self.objects]} repeat; objects of a scene differ in colour")


# ---------------------------------------------------------------------------------------------------
# Wording: value -> (training synonyms, held-out synonyms). The first training synonym is canonical.
# ---------------------------------------------------------------------------------------------------
WORDS = {
    "sphere": (("sphere", "ball"), ("orb",)), "cube": (("cube", "block"), ("box",)),
    "cylinder": (("cylinder", "tube"), ("column",)), "cone": (("cone",), ("conical object",)),
    "red": (("red",), ("crimson",)), "orange": (("orange",), ("tangerine",)),
    "yellow": (("yellow",), ("mustard",)), "green": (("green",), ("emerald",)),
    "blue": (("blue",), ("azure",)), "purple": (("purple", "violet"), ("lilac",)),
    "small": (("small", "little"), ("tiny",)), "large": (("large", "big"), ("huge",)),
    "matte": (("matte", "dull"), ("rubber",)), "shiny": (("shiny", "glossy"), ("metallic",)),
    "left": (("on the left", "at the left"), ("on the left-hand side",)),
    "center": (("in the center", "in the middle"), ("in the centre",)),
    "right": (("on the right", "at the right"), ("on the right-hand side",)),
    "left of": (("to the left of", "left of"), ("on the left side of",)),
    "right of": (("to the right of", "right of"), ("on the right side of",)),
}
NOUN_ORDERS = {  # adjective orders of a noun phrase
    "train": ("{size} {material} {color} {shape}", "{size} {color} {material} {shape}",
              "{material} {size} {color} {shape}"),
    "heldout": ("{color} {shape} that is {size} and {material}", "{size} {material} {color} {shape}"),
}
# Fields: o0 o1 o2 = noun phrases of objects[0..2] with an article, n0 n1 n2 without; L C R = noun phrases
# by slot, pL pC pR = their position phrases; p0 = position of a lone object; rel / inv = relation phrases.
TEMPLATES = {
    (1, "train"): ("{o0} {p0}", "{p0}, {o0}", "there is {o0} {p0}", "{p0} there is {o0}",
                   "a photo of {o0} {p0}", "{n0} {p0}"),
    (1, "heldout"): ("{p0} sits {o0}", "{o0} can be seen {p0}", "an image showing {o0} {p0}"),
    (2, "train"): ("{o0} {rel} {o1}", "{o1} {inv} {o0}", "there is {o0} {rel} {o1}", "{L} {pL} and {R} {pR}",
                   "a photo of {o0} {rel} {o1}", "{n0} {rel} {n1}"),
    (2, "heldout"): ("{o0} stands {rel} {o1}", "{o1}, and {o0} {rel} it", "an image showing {o0} {rel} {o1}"),
    (3, "train"): ("from left to right: {L}, {C} and {R}", "{L} {pL}, {C} {pC} and {R} {pR}",
                   "{o0} {rel} {o1}, which is {rel} {o2}", "{R} {pR}, {C} {pC} and {L} {pL}"),
    (3, "heldout"): ("{L}, then {C}, then {R}, from left to right", "{C} stands between {L} {pL} and {R} {pR}"),
}
HELDOUT_TEMPLATE_MARKERS = ("sits", "can be seen", "image showing", "stands", ", and", "then", "between",
                            "that is")  # words that only held-out templates and noun orders use
WORDINGS = ("train", "heldout")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_for(spec: SceneSpec, generator=None, wording: str = "train", typos=None) -> str:
    """The caption of `spec`. generator=None gives the canonical wording (first template, first synonym:
    "a small shiny red sphere on the left", "a small matte red cone to the left of a large shiny blue
    cube"); a generator (numpy, torch or int seed) draws template, synonyms and adjective order.
    wording="heldout" uses only held-out templates, synonyms and noun orders. typos: a generator that
    misspells one attribute word (size, material, colour or shape) of every object (see `misspell`)."""
    _check("wording", wording, WORDINGS)
    rng = None if generator is None else _numpy_rng(generator)
    which = WORDINGS.index(wording)

    def pick(options):
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    def word(value):  # held-out wording falls back to training words where no held-out synonym exists
        return pick(WORDS[value][which] or WORDS[value][0])

    template = pick(TEMPLATES[len(spec.objects), wording])
    nouns, articled = [], []
    for obj in spec.objects:
        w = {a: word(getattr(obj, a)) for a in ("size", "material", "color", "shape")}
        order = pick(NOUN_ORDERS[wording])
        article = _article(order.format(**w)).split(" ")[0]          # "a" / "an" of the correct spelling
        if typos is not None:
            key = ("size", "material", "color", "shape")[int(_numpy_rng(typos).integers(4))]
            w[key] = misspell(w[key], typos)
        nouns.append(order.format(**w))
        articled.append(f"{article} {nouns[-1]}")
    fields = {f"n{i}": n for i, n in enumerate(nouns)} | {f"o{i}": a for i, a in enumerate(articled)}
    for obj, noun in zip(spec.objects, articled):
        slot = obj.position[0].upper()                              # "L", "C" or "R"
        fields[slot], fields["p" + slot] = noun, word(obj.position)
    fields["p0"] = word(spec.objects[0].position)
    if spec.relation is not None:
        fields["rel"], fields["inv"] = word(spec.relation), word(INVERSE[spec.relation])
    return template.format(**fields)


VOCABULARY = frozenset(w for pair in WORDS.values() for group in pair for phrase in group for w in phrase.split())


def misspell(word: str, generator) -> str:
    """`word` with two neighbouring letters swapped or one letter dropped (never another vocabulary word;
    in a phrase such as "conical object" the longest word is changed)."""
    rng = _numpy_rng(generator)
    parts = word.split(" ")
    k = max(range(len(parts)), key=lambda i: len(parts[i]))
    w = parts[k]
    options = {w[:i] + w[i + 1] + w[i] + w[i + 2:] for i in range(len(w) - 1)}   # swap i, i + 1
    options |= {w[:i] + w[i + 1:] for i in range(1, len(w))}                     # drop one (not the first)
    options = sorted(o for o in options if o != w and o not in VOCABULARY)
    parts[k] = options[int(rng.integers(len(options)))]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------
# Random scenes and the dataset
# ---------------------------------------------------------------------------------------------------
def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs a split may draw: train excludes HELD_OUT, heldout is HELD_OUT only."""
    _check("split", split, SPLITS)
    every = [(c, s) for c in COLORS for s in SHAPES]
    return {"train": [p for p in every if p not in HELD_OUT], "heldout": sorted(HELD_OUT), "all": every}[split]


def _check_scene_args(split: str, max_objects: int, num_objects: int | None) -> None:
    _check("split", split, SPLITS)
    _check("max_objects", max_objects, (1, 2, 3))
    if num_objects is not None:
        _check("num_objects", num_objects, (1, 2, 3))


def random_scene(generator, split: str = "train", max_objects: int = 2, num_objects: int | None = None) -> SceneSpec:
    """Draw a SceneSpec with `num_objects` objects (None: uniform in 1 .. max_objects); every other choice
    is uniform. split="train" never uses a HELD_OUT (colour, shape) pair; "heldout" puts one in every
    scene (at a random object; the others may be anything); "all" uses any pair."""
    rng = _numpy_rng(generator)
    _check_scene_args(split, max_objects, num_objects)
    n = num_objects or 1 + int(rng.integers(max_objects))

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    relation = None if n == 1 else pick(RELATIONS)
    positions = (pick(POSITIONS),) if n == 1 else LAYOUT[n][relation]
    special = int(rng.integers(n)) if split == "heldout" else -1    # the object with the held-out pair
    pairs = []
    for i in range(n):
        pool = allowed_pairs(split if i == special or split != "heldout" else "all")
        pairs.append(pick([p for p in pool if p[0] not in {c for c, _ in pairs}]))   # colours differ
    objects = [ObjectSpec(shape=s, color=c, size=pick(SIZES), material=pick(MATERIALS), position=p)
               for (c, s), p in zip(pairs, positions)]
    return SceneSpec(tuple(objects), relation)


class ScenesDataset(torch.utils.data.Dataset):
    """`size` random captioned scenes; item i depends only on (seed, split, i), never on access order.

    Same interface as shapes.ShapesDataset: items are dicts with "image" [3, image_size, image_size]
    float32 in (0, 1), "caption" str, "spec" SceneSpec, plus "images" {s: [3, s, s]} for every s in
    `image_sizes`; batch them with `collate`. split: "train" (training wording, no HELD_OUT pair),
    "heldout" or "all"; max_objects: 1 .. 3 (the count is uniform); canonical_captions: always the
    canonical wording instead of a random training one; prerender: draw every image at construction.
    Rendering takes about 1-2 ms an item at 32 px and 4 ms at 128 px on one CPU core.
    """

    def __init__(self, size: int = 10000, image_size: int = 32, seed: int = 0, split: str = "train",
                 max_objects: int = 2, image_sizes: tuple[int, ...] | None = None,
                 canonical_captions: bool = False, prerender: bool = False):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r}: the number of items must be a positive int")
        for s in (image_size, *(image_sizes or ())):
            if not isinstance(s, int) or s < 8:
                raise ValueError(f"image size {s!r} (image_size / image_sizes): use ints >= 8")
        _check_scene_args(split, max_objects, None)
        self.size, self.image_size, self.seed, self.split = size, image_size, seed, split
        self.max_objects, self.canonical_captions = max_objects, canonical_captions
        self.image_sizes = tuple(image_sizes) if image_sizes else None
        self._cache = None
        if prerender:
            sizes = {image_size, *(self.image_sizes or ())}
            specs = [self.spec_and_caption(i)[0] for i in range(size)]
            self._cache = {s: torch.stack([render_scene(spec, s) for spec in specs]) for s in sizes}  # [N, 3, s, s]

    def __len__(self) -> int:
        return self.size

    def spec_and_caption(self, i: int) -> tuple[SceneSpec, str]:
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i])  # one stream per item
        spec = random_scene(rng, self.split, self.max_objects)
        return spec, caption_for(spec, None if self.canonical_captions else rng)

    def __getitem__(self, i: int) -> dict:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} is out of range for a ScenesDataset of size {self.size}")
        i = i % self.size
        spec, caption = self.spec_and_caption(i)

        def draw(s):
            return self._cache[s][i] if self._cache is not None else render_scene(spec, s)

        item = {"image": draw(self.image_size), "caption": caption, "spec": spec}
        if self.image_sizes:
            item["images"] = {s: item["image"] if s == self.image_size else draw(s) for s in self.image_sizes}
        return item


# ---------------------------------------------------------------------------------------------------
# Evaluation prompts and a preview
# ---------------------------------------------------------------------------------------------------
PROMPT_KINDS = {  # kind -> (split, number of objects (0: one or two), wording)
    "single": ("train", 1, "canonical"), "single_heldout": ("heldout", 1, "canonical"),
    "two": ("train", 2, "canonical"), "two_heldout": ("heldout", 2, "canonical"),
    "three": ("train", 3, "canonical"), "paraphrase": ("train", 0, "heldout"),
    "misspelled": ("train", 0, "misspelled"),
}


def fixed_prompts(kind: str = "single_heldout", n: int = 16, seed: int = 0) -> list[tuple[str, SceneSpec]]:
    """A fixed evaluation set of n (caption, spec) pairs.

    kind: "single" (one object, training pairs, canonical wording), "single_heldout" (a HELD_OUT pair),
    "two" (two objects of different shapes: colours and materials must bind to the right one),
    "two_heldout", "three", "paraphrase" (one or two objects in held-out templates and synonyms only),
    "misspelled" (canonical wording, one attribute word per object misspelled)."""
    _check("kind", kind, PROMPT_KINDS)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: the number of prompts must be a positive int")
    split, count, wording = PROMPT_KINDS[kind]
    rng = np.random.default_rng([seed, list(PROMPT_KINDS).index(kind)])
    out = []
    while len(out) < n:
        spec = random_scene(rng, split, 3, count or 1 + len(out) % 2)
        if kind.startswith("two") and spec.objects[0].shape == spec.objects[1].shape:
            continue                                                # binding needs two different shapes
        caption = {"canonical": lambda: caption_for(spec), "heldout": lambda: caption_for(spec, rng, "heldout"),
                   "misspelled": lambda: caption_for(spec, typos=rng)}[wording]()
        out.append((caption, spec))
    return out


def preview_grid(path, n: int = 6, sizes: tuple[int, ...] = (32, 128), seed: int = 0, max_objects: int = 3,
                 dpi: int = 80):
    """Save a PNG of n random training scenes (rows) at each of `sizes` (columns), captions beside them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = ScenesDataset(size=n, image_size=sizes[0], image_sizes=tuple(sizes), seed=seed, max_objects=max_objects)
    fig, axes = plt.subplots(n, len(sizes), figsize=(2.2 * len(sizes) + 3.4, 2.2 * n), squeeze=False)
    for row in range(n):
        item = ds[row]
        for col, s in enumerate(sizes):
            axes[row][col].imshow(item["images"][s].permute(1, 2, 0).numpy(), interpolation="nearest")  # [H, W, 3]
            axes[row][col].set_xticks([])
            axes[row][col].set_yticks([])
            if row == 0:
                axes[row][col].set_title(f"{s}x{s}", fontsize=9)
        wrapped = re.sub(r"(.{1,34})(\s|$)", "\\1\n", item["caption"]).strip()
        axes[row][0].set_ylabel(wrapped, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
