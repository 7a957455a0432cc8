"""Captioned shapes: a procedural text-to-image dataset that ships inside the package (no download).

Imagen is trained on hundreds of millions of captioned photos. To see the same ideas work on a laptop we
need captions whose meaning is checkable: "a small red circle in the top left" either is or is not what
the picture shows. Every item here is drawn from a `SceneSpec` (what is where), so the caption, the
picture and the ground truth used by `minimagen.data.shapes_scoring` can never disagree.

A scene holds one or two objects on a plain background. Each object has
  shape     circle, square, triangle (pointing up), heart. A diamond or a plus sign would be the
            obvious fourth, but once a 16 px image is blurred a little both look like a circle; the
            heart's mass sits high where the triangle's sits low, which survives blur
  colour    red, yellow, green, cyan, blue, magenta  -- pure hues 60 degrees apart, so colour survives
            blur, noise and blending with any grey background (mixing with grey keeps the hue)
  size      small / large: the side of the object's square bounding box is SIZE_FRACTION of the image
  position  one cell of a 3x3 grid; the bounding box is centred at CELL_CENTERS, chosen so that a large
            object in a corner still fits and its centre stays well inside its cell
Two-object scenes state how objects[0] relates to objects[1] ("left of", "above", ...); the relation
fixes the layout (left/right cells of the middle row, or top/bottom cells of the middle column) so the
caption describes the picture completely, and the two colours always differ.

Rendering is anti-aliased: each pixel's coverage is the fraction of its supersample x supersample
sub-pixel centres inside the shape (a box filter over a finer grid), then the colour is blended over the
background, pixel = coverage * colour + (1 - coverage) * background. Drawing every stage's resolution
from the same spec gives a consistent low-res/high-res pair for each item of a cascade.

HELD_OUT (colour, shape) pairs never occur in split="train": prompts such as "a large red circle" are
new combinations of familiar words, the compositional test in the Imagen paper's DrawBench spirit.

Map: vocabulary and geometry -> ShapeSpec / SceneSpec -> shape_coverage / render_scene ->
caption_for -> random_scene -> ShapesDataset, collate -> fixed_prompts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------
# Vocabulary and geometry
# ---------------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "heart")
COLORS = {  # name -> RGB in [0, 1]; hue in degrees: 0, 60, 120, 180, 240, 300
    "red": (1.0, 0.0, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "blue": (0.0, 0.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
SIZES = ("small", "large")
SIZE_FRACTION = {"small": 0.33, "large": 0.44}  # box side / image side; small is 5 px even at 16 px
POSITIONS = ("top left", "top", "top right",
             "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # row-major: index = 3 * row + col
CELL_CENTERS = (0.22, 0.5, 0.78)  # box centre / image side per row or column; 0.22 - 0.44/2 = 0: fits
RELATIONS = ("left of", "right of", "above", "below")  # how objects[0] relates to objects[1]
RELATION_LAYOUT = {  # relation -> (position of objects[0], position of objects[1])
    "left of": ("left", "right"), "right of": ("right", "left"),
    "above": ("top", "bottom"), "below": ("bottom", "top"),
}
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
HELD_OUT = frozenset({("red", "circle"), ("yellow", "triangle"), ("blue", "square"),
                      ("magenta", "heart")})  # each colour and shape still appears 3+ times in training
SPLITS = ("train", "heldout", "all")  # heldout: every scene contains at least one HELD_OUT pair
assert all(c in COLORS and s in SHAPES for c, s in HELD_OUT), "HELD_OUT must use the vocabulary"
assert CELL_CENTERS[0] >= SIZE_FRACTION["large"] / 2, "a large object in a corner must fit the image"


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {tuple(allowed)}")


@dataclass(frozen=True)
class ShapeSpec:
    shape: str     # one of SHAPES
    color: str     # one of COLORS
    size: str      # one of SIZES
    position: str  # one of POSITIONS, e.g. "top left", "center"

    def __post_init__(self):
        _check("shape", self.shape, SHAPES)
        _check("color", self.color, COLORS)
        _check("size", self.size, SIZES)
        _check("position", self.position, POSITIONS)


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ShapeSpec, ...]  # one or two objects
    relation: str | None = None     # relation of objects[0] to objects[1]; None for one object

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))  # accept a list, store a tuple
        if len(self.objects) not in (1, 2):
            raise ValueError(f"objects has {len(self.objects)} entries; a scene holds 1 or 2 ShapeSpecs")
        if len(self.objects) == 1:
            if self.relation is not None:
                raise ValueError(f"relation={self.relation!r} needs two objects; use relation=None")
            return
        _check("relation", self.relation, RELATIONS)
        a, b = self.objects
        if (a.position, b.position) != RELATION_LAYOUT[self.relation]:
            raise ValueError(f"relation {self.relation!r} places the objects at "
                             f"{RELATION_LAYOUT[self.relation]}, got ({a.position!r}, {b.position!r})")
        if a.color == b.color:
            raise ValueError(f"both objects are {a.color}; two-object scenes use two different colours")


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------
def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """True where (u, v) lies in `shape`; (u, v) are box coordinates, the bounding box is [-1, 1]^2,
    u grows to the right and v downwards (image rows)."""
    if shape == "circle":
        return u * u + v * v <= 1.0                      # unit disc
    in_box = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "square":
        return in_box
    if shape == "triangle":
        return in_box & (np.abs(u) <= (v + 1.0) / 2.0)   # apex (0, -1), base from (-1, 1) to (1, 1)
    if shape == "heart":  # two lobes (discs of radius 1/2 at (+-1/2, -1/2)) over a downward triangle
        lobes = ((np.abs(u) - 0.5) ** 2 + (v + 0.5) ** 2 <= 0.25)
        return lobes | ((v >= -0.5) & (v <= 1.0) & (np.abs(u) <= (1.0 - v) / 1.5))
    raise ValueError(f"shape={shape!r} is not one of {SHAPES}")


def shape_coverage(shape: str, center: tuple[float, float], side: float, height: int, width: int,
                   supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by `shape`, [height, width] float32 in [0, 1].

    center = (x, y) of the bounding box in pixels (x = column, pixel i spans [i, i + 1)); side = the
    bounding box's side in pixels. Only the pixels the box touches are evaluated."""
    cx, cy = center
    half = side / 2.0
    x0, x1 = max(int(np.floor(cx - half)), 0), min(int(np.ceil(cx + half)), width)
    y0, y1 = max(int(np.floor(cy - half)), 0), min(int(np.ceil(cy + half)), height)
    out = np.zeros((height, width), dtype=np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    s = supersample
    xs = x0 + (np.arange((x1 - x0) * s) + 0.5) / s    # sub-pixel centres, [(x1-x0)*s]
    ys = y0 + (np.arange((y1 - y0) * s) + 0.5) / s    # [(y1-y0)*s]
    inside = shape_inside(shape, (xs[None, :] - cx) / half, (ys[:, None] - cy) / half)  # [h*s, w*s]
    box = inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))  # box filter -> [h, w]
    out[y0:y1, x0:x1] = box
    return out


def object_box(obj: ShapeSpec, image_size: int) -> tuple[tuple[float, float], float]:
    """((x, y) centre, side) of the object's bounding box in pixels."""
    row, col = divmod(POSITIONS.index(obj.position), 3)
    center = (CELL_CENTERS[col] * image_size, CELL_CENTERS[row] * image_size)
    return center, SIZE_FRACTION[obj.size] * image_size


def render_scene(spec: SceneSpec, image_size: int, background=(1.0, 1.0, 1.0),
                 supersample: int = 4) -> torch.Tensor:
    """Draw `spec` as a [3, image_size, image_size] float32 tensor in [0, 1] on a plain `background`."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size={image_size!r}: use an int >= 8 (objects need a few pixels)")
    if len(background) != 3 or not all(0.0 <= c <= 1.0 for c in background):
        raise ValueError(f"background={background!r}: use an (r, g, b) triple in [0, 1]")
    if not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"supersample={supersample!r}: use an int >= 1 (4 is plenty)")
    canvas = np.empty((image_size, image_size, 3), dtype=np.float32)
    canvas[:] = np.asarray(background, dtype=np.float32)              # [H, W, 3]
    for obj in spec.objects:
        center, side = object_box(obj, image_size)
        a = shape_coverage(obj.shape, center, side, image_size, image_size, supersample)[..., None]
        canvas = a * np.asarray(COLORS[obj.color], np.float32) + (1.0 - a) * canvas  # alpha blend
    return torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))  # [H, W, 3] -> [3, H, W]


# ---------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------
POSITION_PHRASES = {"top left": "in the top left", "top": "at the top", "top right": "in the top right",
                    "left": "on the left", "center": "in the center", "right": "on the right",
                    "bottom left": "in the bottom left", "bottom": "at the bottom",
                    "bottom right": "in the bottom right"}
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of",
                    "above": "above", "below": "below"}
NUM_TEMPLATES = 4  # caption wordings per scene; template 0 is the canonical one used for evaluation


def _noun(obj: ShapeSpec) -> str:
    return f"{obj.size} {obj.color} {obj.shape}"


def caption_for(spec: SceneSpec, template: int = 0) -> str:
    """The caption of `spec` in wording `template` (0 .. NUM_TEMPLATES - 1). Every wording names every
    attribute, so the caption alone determines the picture; e.g. for one object:
      0 "a small red circle in the top left"      1 "top left: small red circle"
      2 "in the top left, there is a small red circle"   3 "a picture of a small red circle in the top left"
    and for two: 0 "a large blue square to the left of a small yellow triangle", 1 "large blue square
    left of small yellow triangle", 2 the same scene from the other object ("a small yellow triangle to
    the right of a large blue square"), 3 "a picture of a large blue square to the left of ...".
    """
    if not 0 <= template < NUM_TEMPLATES:
        raise ValueError(f"template={template} is out of range; use 0 .. {NUM_TEMPLATES - 1}")
    if len(spec.objects) == 1:
        obj = spec.objects[0]
        noun, where = _noun(obj), POSITION_PHRASES[obj.position]
        return (f"a {noun} {where}", f"{obj.position}: {noun}", f"{where}, there is a {noun}",
                f"a picture of a {noun} {where}")[template]
    a, b = spec.objects
    rel = RELATION_PHRASES[spec.relation]
    return (f"a {_noun(a)} {rel} a {_noun(b)}", f"{_noun(a)} {spec.relation} {_noun(b)}",
            f"a {_noun(b)} {RELATION_PHRASES[INVERSE_RELATION[spec.relation]]} a {_noun(a)}",
            f"a picture of a {_noun(a)} {rel} a {_noun(b)}")[template]


# ---------------------------------------------------------------------------------------------------
# Random scenes
# ---------------------------------------------------------------------------------------------------
def _numpy_rng(generator) -> np.random.Generator:
    """A numpy Generator from a numpy Generator (used as is), a torch.Generator (one draw seeds a numpy
    one) or an int seed."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if isinstance(generator, (int, np.integer)):
        return np.random.default_rng(int(generator))
    raise TypeError(f"generator is a {type(generator).__name__}; pass a numpy Generator, "
                    "a torch.Generator or an int seed")


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs a split may draw: train excludes HELD_OUT, heldout is HELD_OUT only."""
    _check("split", split, SPLITS)
    every = [(c, s) for c in COLORS for s in SHAPES]
    return {"train": [p for p in every if p not in HELD_OUT], "heldout": sorted(HELD_OUT),
            "all": every}[split]


def _check_scene_args(split: str, max_objects: int, p_two: float) -> None:
    _check("split", split, SPLITS)
    _check("max_objects", max_objects, (1, 2))
    if not 0.0 <= p_two <= 1.0:
        raise ValueError(f"p_two={p_two} is not a probability; use a value in [0, 1]")


def random_scene(generator, split: str = "train", max_objects: int = 2, p_two: float = 0.5) -> SceneSpec:
    """Draw a SceneSpec: two objects with probability `p_two` (if max_objects == 2), else one.

    Sizes, positions, relations are uniform. split="train" never uses a HELD_OUT (colour, shape) pair;
    "heldout" puts one in every scene (the other object of a pair may be anything); "all" uses any."""
    rng = _numpy_rng(generator)
    _check_scene_args(split, max_objects, p_two)

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    def obj(pair, position):
        return ShapeSpec(shape=pair[1], color=pair[0], size=pick(SIZES), position=position)

    if max_objects == 1 or rng.random() >= p_two:
        return SceneSpec((obj(pick(allowed_pairs(split)), pick(POSITIONS)),))
    relation = pick(RELATIONS)
    first = pick(allowed_pairs(split))
    second_pool = allowed_pairs("all" if split == "heldout" else split)
    second = pick([p for p in second_pool if p[0] != first[0]])      # two different colours
    if rng.random() < 0.5:                                          # the held-out pair may come second
        first, second = second, first
    pos_a, pos_b = RELATION_LAYOUT[relation]
    return SceneSpec((obj(first, pos_a), obj(second, pos_b)), relation)


# ---------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------
class ShapesDataset(torch.utils.data.Dataset):
    """`size` random captioned scenes; item i depends only on (seed, split, i), never on access order.

    Items are dicts: "image" [3, image_size, image_size] float32 in [0, 1], "caption" str, "spec"
    SceneSpec, plus "images" {s: [3, s, s]} for every s in `image_sizes` (the same scene drawn at each
    cascade stage's resolution). Use `collate` as the DataLoader's collate_fn (default_collate cannot
    batch SceneSpecs).

    size: number of items; image_size: side of "image"; seed: picks the scenes; split: "train"
    (no HELD_OUT pair), "heldout" (one in every scene) or "all"; max_objects: 1 or 2; image_sizes:
    extra resolutions for a cascade, or None; p_two: chance of a two-object scene; template: caption
    wording, None = a random one per item; background: RGB in [0, 1]; prerender: draw every image at
    construction (4 * size * 3 * s^2 bytes per resolution s: 120 MB for 10,000 items at 32 px)
    instead of on the fly (about 0.3 ms an item at 32 px).
    """

    def __init__(self, size: int = 10000, image_size: int = 32, seed: int = 0, split: str = "train",
                 max_objects: int = 2, image_sizes: tuple[int, ...] | None = None, p_two: float = 0.5,
                 template: int | None = None, background=(1.0, 1.0, 1.0), prerender: bool = False):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size={size!r}: the number of items must be a positive int")
        for s in (image_size, *(image_sizes or ())):
            if not isinstance(s, int) or s < 8:
                raise ValueError(f"image size {s!r} (image_size / image_sizes): use ints >= 8")
        if template is not None and not 0 <= template < NUM_TEMPLATES:
            raise ValueError(f"template={template}: use None (random per item) or 0 .. {NUM_TEMPLATES - 1}")
        _check_scene_args(split, max_objects, p_two)
        self.size, self.image_size, self.seed, self.split = size, image_size, seed, split
        self.max_objects, self.p_two, self.template = max_objects, p_two, template
        self.image_sizes = tuple(image_sizes) if image_sizes else None
        self.background = tuple(background)
        self._cache = None
        if prerender:
            items = [self[i] for i in range(size)]
            self._cache = {s: torch.stack([it["images"][s] if s != image_size else it["image"]
                                           for it in items])        # [N, 3, s, s]
                           for s in {image_size, *(self.image_sizes or ())}}

    def __len__(self) -> int:
        return self.size

    def spec_and_caption(self, i: int) -> tuple[SceneSpec, str]:
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i])  # one stream per item
        spec = random_scene(rng, self.split, self.max_objects, self.p_two)
        template = self.template if self.template is not None else int(rng.integers(NUM_TEMPLATES))
        return spec, caption_for(spec, template)

    def __getitem__(self, i: int) -> dict:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} is out of range for a ShapesDataset of size {self.size}")
        i = i % self.size
        spec, caption = self.spec_and_caption(i)

        def draw(s):
            if self._cache is not None:
                return self._cache[s][i]
            return render_scene(spec, s, self.background)

        item = {"image": draw(self.image_size), "caption": caption, "spec": spec}
        if self.image_sizes:
            item["images"] = {s: item["image"] if s == self.image_size else draw(s) for s in self.image_sizes}
        return item


def collate(batch: list[dict]) -> dict:
    """Batch ShapesDataset items: tensors are stacked ([B, 3, H, W]), captions and specs become lists."""
    out = {"image": torch.stack([b["image"] for b in batch]), "caption": [b["caption"] for b in batch],
           "spec": [b["spec"] for b in batch]}
    if "images" in batch[0]:
        out["images"] = {s: torch.stack([b["images"][s] for b in batch]) for s in batch[0]["images"]}
    return out


PROMPT_KINDS = {  # kind -> (split, p_two)
    "single": ("train", 0.0), "single_heldout": ("heldout", 0.0),
    "two": ("train", 1.0), "two_heldout": ("heldout", 1.0),
}


def fixed_prompts(kind: str = "single_heldout", n: int = 16, seed: int = 0) -> list[tuple[str, SceneSpec]]:
    """A fixed evaluation set of n (caption, spec) pairs, canonical wording (template 0).

    kind: "single" (one object, training pairs), "single_heldout" (one object, a HELD_OUT pair: new
    combinations), "two" (two objects, training pairs), "two_heldout" (two objects, one HELD_OUT)."""
    _check("kind", kind, PROMPT_KINDS)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: the number of prompts must be a positive int")
    split, p_two = PROMPT_KINDS[kind]
    rng = np.random.default_rng([seed, list(PROMPT_KINDS).index(kind)])
    specs = [random_scene(rng, split, 2, p_two) for _ in range(n)]
    return [(caption_for(s, 0), s) for s in specs]
