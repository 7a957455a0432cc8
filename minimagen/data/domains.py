"""The built-in data domains, by name: what `train_small` renders, which prompts it evaluates, how it scores.

    shapes   flat pure-hue shapes on white (shapes.py, shapes_scoring.py): caption following is easy to see
    scenes   shaded 3-D objects on a lit floor (scenes.py, scenes_render.py, scenes_scoring.py): mid-tone
             pictures with photographs' statistics, materials, and held-out wordings and misspellings

Every domain offers the same four things, so the training pipeline and the report need only its name:
a Dataset class (ShapesDataset / ScenesDataset: same constructor arguments and items), `fixed_prompts(kind,
n, seed)` -> [(caption, spec)], its prompt kinds, and `score_alignment(images, specs)` -> {attribute: accuracy,
"all_correct": ...}. Modules are imported when a domain is asked for, not at import of minimagen.

Contents: DOMAINS, Domain, load_domain, alignment_summary (the scorers' shared tally).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

DOMAINS = {  # name -> (data module, scoring module, Dataset class name)
    "shapes": ("minimagen.data.shapes", "minimagen.data.shapes_scoring", "ShapesDataset"),
    "scenes": ("minimagen.data.scenes", "minimagen.data.scenes_scoring", "ScenesDataset"),
}


@dataclass(frozen=True)
class Domain:
    name: str                    # a key of DOMAINS
    dataset: type                # Dataset class: (size, image_size, seed, split, max_objects, image_sizes, ...)
    fixed_prompts: Callable      # (kind, n, seed) -> [(caption, spec)]
    prompt_kinds: tuple[str, ...]  # the kinds fixed_prompts accepts
    score_alignment: Callable    # (images [N, 3, H, W] in [0, 1], specs) -> {attribute: accuracy, ...}
    max_objects: int             # most objects a scene of this domain holds


def load_domain(name: str) -> Domain:
    """The built-in domain `name` ("shapes" or "scenes")."""
    if name not in DOMAINS:
        raise ValueError(f"domain={name!r} is not one of {tuple(DOMAINS)}")
    data_module, scoring_module, dataset = DOMAINS[name]
    data, scoring = importlib.import_module(data_module), importlib.import_module(scoring_module)
    return Domain(name=name, dataset=getattr(data, dataset), fixed_prompts=data.fixed_prompts,
                  prompt_kinds=tuple(data.PROMPT_KINDS), score_alignment=scoring.score_alignment,
                  max_objects=3 if name == "scenes" else 2)


def check_images_and_specs(images, specs) -> None:
    """The scorers' argument check: one spec per image, at least one image."""
    if len(images) != len(specs):
        raise ValueError(f"got {len(images)} images but {len(specs)} specs; pass one spec per image")
    if len(specs) == 0:
        raise ValueError("images is empty; pass at least one image and its spec")


def alignment_summary(matches: list[dict], attributes: tuple[str, ...]) -> dict[str, float]:
    """Tally each image's match (a scorer's match_scene result) into score_alignment's dict: per-attribute accuracy
    over objects, relation over scenes that have one (NaN if none), count and all_correct over images, and the
    numbers n, n_objects, n_relations they were taken over."""
    per_object = {a: [judged[a] for m in matches for judged in m["objects"]] for a in attributes}
    relations = [m["relation"] for m in matches if m["relation"] is not None]
    out = {a: float(np.mean(v)) for a, v in per_object.items()}
    out["relation"] = float(np.mean(relations)) if relations else float("nan")
    out.update(count=float(np.mean([m["count"] for m in matches])),
               all_correct=float(np.mean([m["all_correct"] for m in matches])), n=len(matches),
               n_objects=len(per_object[attributes[0]]), n_relations=len(relations))
    return out
