"""Write a small synthetic CLEVR-style VQA dataset in the real CLEVR v1.0 and TDIUC file layouts.

It is the embedded default dataset of the CPU VQA demo: it needs no download, takes a few seconds
for about a thousand images, and is fully determined by ``--seed``. Preprocessing written for the
real datasets runs on it unchanged.

    python -m vqa_experiments.make_synthetic_vqa --out data/synthetic_vqa --num_train_images 600 \\
        --num_val_images 200 --questions_per_image 10 --image_size 128 --seed 0

Each scene holds 3 to 6 non-overlapping objects on a plain light-gray background, with CLEVR's
attributes (8 colours, cube / sphere / cylinder, small / large, rubber / metal; metal objects get a
bright outline and a specular highlight). The same scenes are written twice::

    OUT/CLEVR_v1.0/images/{train,val}/CLEVR_{split}_{index:06d}.png
    OUT/CLEVR_v1.0/scenes/CLEVR_{split}_scenes.json
    OUT/CLEVR_v1.0/questions/CLEVR_{split}_questions.json      (with functional programs)
    OUT/TDIUC/Images/{train2014,val2014}/COCO_{split}2014_{image_id:012d}.jpg
    OUT/TDIUC/Questions/OpenEnded_mscoco_{split}2014_questions.json
    OUT/TDIUC/Annotations/mscoco_{split}2014_annotations.json

Beyond the real layouts, each TDIUC annotation carries ``question_family`` (the template, e.g.
``query_color``; CLEVR's files have ``question_family_index``): the demo uses it to state each question
type's chance level. ``--num_pretrain_images N`` also writes ``OUT/pretrain_scenes/`` (images and a
scene file, no questions, disjoint from train and val) for training a feature trunk.

with ``image_id = 1000000 + index`` (train) or ``2000000 + index`` (val) and
``question_id = image_id * 100 + k`` for the k-th question of an image. CLEVR questions cycle
through 8 slots: count, query_attribute, exist, query_attribute, compare_integer, query_attribute,
compare_attribute, query_attribute (half are attribute queries; the type is given by the last function
of the program); TDIUC questions cycle through object_presence, counting,
color, attribute, object_recognition, positional_reasoning and absurd. Every answer is computed by
executing the question's program on the scene; yes/no questions aim at 50 % "yes".

An existing ``OUT/CLEVR_v1.0`` or ``OUT/TDIUC`` is refused unless ``--overwrite`` is given (then
both are replaced). Everything is written to a hidden staging folder in OUT first and moved into
place when complete.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from remind.checkpoint import atomic_write_text
from remind.cli import run_main

# CLEVR's own palette.
COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
SIZES: tuple[str, ...] = ("small", "large")
MATERIALS: tuple[str, ...] = ("rubber", "metal")
# Order of the attributes in a description ("large red metal cube"), as in CLEVR's templates.
ATTRIBUTES: tuple[str, ...] = ("size", "color", "material", "shape")
VALUES: dict[str, tuple[str, ...]] = {"size": SIZES, "color": tuple(COLORS), "material": MATERIALS,
                                      "shape": SHAPES}
# relation -> words in a question; CLEVR's relationships: "left"[i] lists the objects left of object i.
RELATIONS: dict[str, str] = {"left": "left of", "right": "right of", "front": "in front of", "behind": "behind"}
BACKGROUND: tuple[int, int, int] = (214, 214, 214)
MIN_OBJECTS, MAX_OBJECTS = 3, 6
MIN_IMAGE_SIZE = 32
SUPERSAMPLE = 2  # objects are drawn at twice the size and box-filtered down (anti-aliasing)

CLEVR_QUESTION_TYPES: tuple[str, ...] = ("count", "exist", "compare_integer", "compare_attribute",
                                         "query_attribute")
TDIUC_QUESTION_TYPES: tuple[str, ...] = ("object_presence", "counting", "color", "attribute",
                                         "object_recognition", "positional_reasoning", "absurd")
# question_family_index of the CLEVR files: one family per template written here.
CLEVR_FAMILIES: tuple[str, ...] = (
    "count", "count_relate", "exist", "exist_relate", "greater_than", "less_than", "equal_integer",
    "equal_color", "equal_material", "equal_shape", "equal_size",
    "query_color", "query_material", "query_shape", "query_size",
)
_LAST_FUNCTION_TYPE: dict[str, str] = {
    "count": "count", "exist": "exist",
    "greater_than": "compare_integer", "less_than": "compare_integer", "equal_integer": "compare_integer",
    **{f"equal_{a}": "compare_attribute" for a in ATTRIBUTES},
    **{f"query_{a}": "query_attribute" for a in ATTRIBUTES},
}
ABSURD_NOUNS: tuple[str, ...] = ("dog", "cat", "horse", "car", "bus", "train", "person", "bird", "tree",
                                 "umbrella", "pizza", "giraffe")
ABSURD_TEMPLATES: tuple[str, ...] = ("What color is the {}?", "What is the {} doing?", "Where is the {}?")
NOT_APPLICABLE = "doesnotapply"
TRAIN_IMAGE_ID_BASE, VAL_IMAGE_ID_BASE = 1_000_000, 2_000_000
MAX_IMAGES_PER_SPLIT = 1_000_000
MAX_QUESTIONS_PER_IMAGE = 100  # question_id = image_id * 100 + k
CLEVR_DIR, TDIUC_DIR = "CLEVR_v1.0", "TDIUC"
# Scenes without questions, disjoint from train and val: what the demo trains its trunk on (the stand-in for
# ImageNet, on which the real runs' trunks were trained).
PRETRAIN_DIR = "pretrain_scenes"

Scene = dict[str, Any]
Description = dict[str, str]


def clevr_question_type(program: Sequence[dict[str, Any]]) -> str:
    """The CLEVR question type of a program: decided by its last function."""
    return _LAST_FUNCTION_TYPE[program[-1]["function"]]


def object_radius(size: str, image_size: int) -> int:
    """Half the side of an object's bounding square in pixels (10 / 18 px at 128 px)."""
    small = max(2, round(image_size * 10 / 128))
    return small if size == "small" else max(round(image_size * 18 / 128), small + 2)


# ----------------------------------------------------------------------------------------------- scenes

def _place(rng: np.random.Generator, radii: Sequence[int], image_size: int, gap: int) -> list[tuple[int, int]] | None:
    """Centres for objects with these radii: inside the image and with bounding squares ``gap`` apart."""
    placed: list[tuple[int, int, int]] = []
    for r in radii:
        for _ in range(200):
            x, y = (int(v) for v in rng.integers(r + 1, image_size - r - 1, size=2))
            if all(abs(x - px) >= r + pr + gap or abs(y - py) >= r + pr + gap for px, py, pr in placed):
                placed.append((x, y, r))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def relationships(pixel_coords: Sequence[Sequence[float]]) -> dict[str, list[list[int]]]:
    """CLEVR's relationships: for each object i, the objects left of / right of / in front of / behind it.

    Left / right compare pixel x; in front (larger y) / behind compare pixel y; ties are neither.
    """
    n = len(pixel_coords)
    xs = [p[0] for p in pixel_coords]
    ys = [p[1] for p in pixel_coords]
    return {
        "left": [[j for j in range(n) if xs[j] < xs[i]] for i in range(n)],
        "right": [[j for j in range(n) if xs[j] > xs[i]] for i in range(n)],
        "front": [[j for j in range(n) if ys[j] > ys[i]] for i in range(n)],
        "behind": [[j for j in range(n) if ys[j] < ys[i]] for i in range(n)],
    }


def object_cell(obj: dict[str, Any], render_size: int, rows: int, cols: int) -> tuple[int, int]:
    """(row, column) of the cell holding the object's centre on a ``rows`` x ``cols`` map of a ``render_size`` px
    scene (its ``pixel_coords``)."""
    x, y = obj["pixel_coords"][:2]
    return min(int(y * rows / render_size), rows - 1), min(int(x * cols / render_size), cols - 1)


def make_scene(rng: np.random.Generator, split: str, index: int, image_size: int) -> Scene:
    """A random scene in CLEVR's scene-JSON format (3d_coords: pixel coordinates mapped to [-3, 3])."""
    num_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    gap = max(1, image_size // 64)
    while True:
        attributes = [{a: VALUES[a][int(rng.integers(len(VALUES[a])))] for a in ATTRIBUTES}
                      for _ in range(num_objects)]
        radii = [object_radius(o["size"], image_size) for o in attributes]
        centres = None
        for _ in range(20):
            centres = _place(rng, radii, image_size, gap)
            if centres is not None:
                break
        if centres is not None:
            break
        if num_objects == MIN_OBJECTS:
            raise RuntimeError(f"cannot place {MIN_OBJECTS} objects in a {image_size} px image")
        num_objects -= 1
    objects = []
    for attrs, (x, y) in zip(attributes, centres):
        objects.append({
            "color": attrs["color"], "shape": attrs["shape"], "material": attrs["material"], "size": attrs["size"],
            "3d_coords": [round(6.0 * x / image_size - 3.0, 4), round(3.0 - 6.0 * y / image_size, 4), 0.0],
            "pixel_coords": [x, y, 0.0], "rotation": 0.0,
        })
    return {"image_index": index, "image_filename": f"CLEVR_{split}_{index:06d}.png", "split": split,
            "objects": objects, "relationships": relationships([o["pixel_coords"] for o in objects])}


def _mix(rgb: tuple[int, int, int], other: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(rgb, other))


def _draw_object(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, obj: dict[str, Any]) -> None:
    """Cube: filled square; sphere: filled circle; cylinder: narrower upright body with elliptical
    top (lighter face) and bottom. Metal: bright outline and a white highlight; rubber: flat."""
    rgb = COLORS[obj["color"]]
    metal = obj["material"] == "metal"
    outline = _mix(rgb, (255, 255, 255), 0.6) if metal else None
    width = max(1, round(r / 7)) if metal else 0
    highlight = (255, 255, 255)
    if obj["shape"] == "sphere":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb, outline=outline, width=width)
        spot = (cx - 0.35 * r, cy - 0.35 * r, 0.25 * r)
    elif obj["shape"] == "cube":
        h = 0.85 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=rgb, outline=outline, width=width)
        spot = (cx - 0.45 * h, cy - 0.45 * h, 0.22 * r)
    else:
        w, e = 0.7 * r, 0.3 * r
        top, bottom = cy - r, cy + r
        draw.ellipse([cx - w, bottom - 2 * e, cx + w, bottom], fill=rgb, outline=outline, width=width)
        draw.rectangle([cx - w, top + e, cx + w, bottom - e], fill=rgb)
        if metal:
            draw.line([cx - w + width / 2, top + e, cx - w + width / 2, bottom - e], fill=outline, width=width)
            draw.line([cx + w - width / 2, top + e, cx + w - width / 2, bottom - e], fill=outline, width=width)
        face = _mix(rgb, (255, 255, 255), 0.45 if metal else 0.3)
        draw.ellipse([cx - w, top, cx + w, top + 2 * e], fill=face, outline=outline, width=width)
        spot = None
        if metal:
            draw.ellipse([cx - 0.6 * w, cy - 0.25 * r, cx - 0.3 * w, cy + 0.45 * r], fill=highlight)
    if metal and spot is not None:
        x, y, s = spot
        draw.ellipse([x - s, y - s, x + s, y + s], fill=highlight)


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """An RGB ``image_size`` x ``image_size`` image of the scene (objects drawn back to front)."""
    side = image_size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in sorted(scene["objects"], key=lambda o: o["pixel_coords"][1]):
        x, y = obj["pixel_coords"][:2]
        _draw_object(draw, (x + 0.5) * SUPERSAMPLE, (y + 0.5) * SUPERSAMPLE,
                     object_radius(obj["size"], image_size) * SUPERSAMPLE, obj)
    return image.reduce(SUPERSAMPLE)


# --------------------------------------------------------------------------------------------- programs

class NotUnique(Exception):
    """A ``unique`` node got zero or several objects."""


def execute(program: Sequence[dict[str, Any]], scene: Scene) -> Any:
    """Run a CLEVR program on a scene; returns the last node's value (raises NotUnique)."""
    objects = scene["objects"]
    values: list[Any] = []
    for node in program:
        fn = node["function"]
        args = [values[i] for i in node["inputs"]]
        if fn == "scene":
            out: Any = list(range(len(objects)))
        elif fn.startswith("filter_"):
            attr = fn[len("filter_"):]
            out = [i for i in args[0] if objects[i][attr] == node["value_inputs"][0]]
        elif fn == "unique":
            if len(args[0]) != 1:
                raise NotUnique(fn)
            out = args[0][0]
        elif fn == "relate":
            out = list(scene["relationships"][node["value_inputs"][0]][args[0]])
        elif fn == "count":
            out = len(args[0])
        elif fn == "exist":
            out = len(args[0]) > 0
        elif fn.startswith("query_"):
            out = objects[args[0]][fn[len("query_"):]]
        elif fn.startswith("equal_"):
            out = args[0] == args[1]
        elif fn == "greater_than":
            out = args[0] > args[1]
        elif fn == "less_than":
            out = args[0] < args[1]
        else:
            raise ValueError(f"unknown function {fn}")
        values.append(out)
    return values[-1]


def answer_text(value: Any) -> str:
    """yes / no for booleans, digits for counts, the value itself for attributes."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class _Program:
    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []

    def add(self, function: str, inputs: Sequence[int] = (), values: Sequence[str] = ()) -> int:
        self.nodes.append({"function": function, "inputs": list(inputs), "value_inputs": list(values)})
        return len(self.nodes) - 1

    def filters(self, desc: Description, start: int) -> int:
        for attr in ATTRIBUTES:
            if attr in desc:
                start = self.add(f"filter_{attr}", [start], [desc[attr]])
        return start

    def select(self, desc: Description) -> int:
        return self.filters(desc, self.add("scene"))

    def unique(self, desc: Description) -> int:
        return self.add("unique", [self.select(desc)])


@dataclass
class Question:
    qtype: str
    text: str
    answer: str
    program: list[dict[str, Any]]
    family: str


def _question(qtype: str, family: str, text: str, program: _Program, scene: Scene) -> Question:
    return Question(qtype, text, answer_text(execute(program.nodes, scene)), program.nodes, family)


# ------------------------------------------------------------------------------------------ descriptions

def phrase(desc: Description, plural: bool = False) -> str:
    """``{"size": "large", "shape": "cube"}`` -> "large cube" ("large cubes"); no shape -> "thing"."""
    noun = desc.get("shape", "thing") + ("s" if plural else "")
    return " ".join([desc[a] for a in ATTRIBUTES[:3] if a in desc] + [noun])


def _matches(scene: Scene, candidates: Sequence[int], desc: Description) -> list[int]:
    objects = scene["objects"]
    return [i for i in candidates if all(objects[i][a] == v for a, v in desc.items())]


def _unique_description(rng: np.random.Generator, scene: Scene, candidates: Sequence[int], target: int,
                        allowed: Sequence[str]) -> Description | None:
    """A random description, among the shortest (or, one time in three, one attribute longer), that
    singles out ``target`` among ``candidates`` using only the ``allowed`` attributes; None if none."""
    obj = scene["objects"][target]
    by_length: dict[int, list[Description]] = {}
    for k in range(len(allowed) + 1):
        for attrs in itertools.combinations(allowed, k):
            desc = {a: obj[a] for a in attrs}
            if _matches(scene, candidates, desc) == [target]:
                by_length.setdefault(k, []).append(desc)
    if not by_length:
        return None
    shortest = min(by_length)
    pool = by_length[shortest]
    if shortest + 1 in by_length and rng.random() < 1 / 3:
        pool = by_length[shortest + 1]
    return pool[int(rng.integers(len(pool)))]


def _random_description(rng: np.random.Generator, scene: Scene, candidates: Sequence[int],
                        min_attrs: int = 1, max_attrs: int = 2) -> Description:
    """1-2 random attributes, their values taken from a random candidate (60 %) or drawn at random."""
    k = int(rng.integers(min_attrs, max_attrs + 1))
    attrs = [ATTRIBUTES[i] for i in sorted(rng.choice(len(ATTRIBUTES), size=k, replace=False))]
    if candidates and rng.random() < 0.6:
        obj = scene["objects"][candidates[int(rng.integers(len(candidates)))]]
        return {a: obj[a] for a in attrs}
    return {a: VALUES[a][int(rng.integers(len(VALUES[a])))] for a in attrs}


def _anchor(rng: np.random.Generator, scene: Scene) -> tuple[int, Description] | None:
    """A random object that a description singles out in the scene, with that description."""
    for i in rng.permutation(len(scene["objects"])):
        desc = _unique_description(rng, scene, range(len(scene["objects"])), int(i), ATTRIBUTES)
        if desc is not None:
            return int(i), desc
    return None


def _relation(rng: np.random.Generator) -> str:
    return tuple(RELATIONS)[int(rng.integers(len(RELATIONS)))]


def _balanced(rng: np.random.Generator, make: Callable[[], Question | None], tries: int = 20) -> Question | None:
    """A yes/no question whose answer is a coin flip's target when one of ``tries`` candidates hits it."""
    target = "yes" if rng.random() < 0.5 else "no"
    last = None
    for _ in range(tries):
        question = make()
        if question is None:
            continue
        if question.answer == target:
            return question
        last = question
    return last


def _all(scene: Scene) -> list[int]:
    return list(range(len(scene["objects"])))


def _query(rng: np.random.Generator, scene: Scene, qtype: str, attrs: Sequence[str]) -> Question | None:
    """"What <attr> is the <unique object described without attr>?" for the first attr that works."""
    for attr in rng.permutation(list(attrs)):
        attr = str(attr)
        allowed = [a for a in ATTRIBUTES if a != attr]
        for i in rng.permutation(len(scene["objects"])):
            desc = _unique_description(rng, scene, _all(scene), int(i), allowed)
            if desc is not None:
                program = _Program()
                program.add(f"query_{attr}", [program.unique(desc)])
                return _question(qtype, f"query_{attr}", f"What {attr} is the {phrase(desc)}?", program, scene)
    return None


def _relate_set(rng: np.random.Generator, scene: Scene) -> tuple[_Program, int, str, Description, list[int]] | None:
    """scene -> filters -> unique -> relate: the program so far, its last node, the relation, the anchor's
    description and the related objects."""
    found = _anchor(rng, scene)
    if found is None:
        return None
    anchor, desc = found
    relation = _relation(rng)
    program = _Program()
    node = program.add("relate", [program.unique(desc)], [relation])
    return program, node, relation, desc, list(scene["relationships"][relation][anchor])


# ----------------------------------------------------------------------------------- CLEVR templates

def _clevr_count(rng: np.random.Generator, scene: Scene) -> Question | None:
    if rng.random() < 0.3:
        found = _relate_set(rng, scene)
        if found is not None:
            program, node, relation, anchor, related = found
            target = {} if rng.random() < 0.5 else _random_description(rng, scene, related, 1, 1)
            program.add("count", [program.filters(target, node)])
            text = f"How many {phrase(target, True)} are {RELATIONS[relation]} the {phrase(anchor)}?"
            return _question("count", "count_relate", text, program, scene)
    desc = _random_description(rng, scene, _all(scene))
    program = _Program()
    program.add("count", [program.select(desc)])
    return _question("count", "count", f"How many {phrase(desc, True)} are there?", program, scene)


def _clevr_exist(rng: np.random.Generator, scene: Scene) -> Question | None:
    relate = rng.random() < 0.3

    def make() -> Question | None:
        if relate:
            found = _relate_set(rng, scene)
            if found is None:
                return None
            program, node, relation, anchor, related = found
            target = _random_description(rng, scene, related, 1, 1)
            program.add("exist", [program.filters(target, node)])
            text = f"Are there any {phrase(target, True)} {RELATIONS[relation]} the {phrase(anchor)}?"
            return _question("exist", "exist_relate", text, program, scene)
        desc = _random_description(rng, scene, _all(scene))
        program = _Program()
        program.add("exist", [program.select(desc)])
        return _question("exist", "exist", f"Are there any {phrase(desc, True)}?", program, scene)

    return _balanced(rng, make)


_COMPARE_INTEGER_TEXT: dict[str, str] = {
    "greater_than": "Are there more {} than {}?",
    "less_than": "Are there fewer {} than {}?",
    "equal_integer": "Are there the same number of {} and {}?",
}


def _clevr_compare_integer(rng: np.random.Generator, scene: Scene) -> Question | None:
    function = tuple(_COMPARE_INTEGER_TEXT)[int(rng.integers(len(_COMPARE_INTEGER_TEXT)))]

    def make() -> Question | None:
        first = _random_description(rng, scene, _all(scene))
        second = _random_description(rng, scene, _all(scene))
        if first == second:
            return None
        program = _Program()
        a = program.add("count", [program.select(first)])
        b = program.add("count", [program.select(second)])
        program.add(function, [a, b])
        text = _COMPARE_INTEGER_TEXT[function].format(phrase(first, True), phrase(second, True))
        return _question("compare_integer", function, text, program, scene)

    return _balanced(rng, make)


def _clevr_compare_attribute(rng: np.random.Generator, scene: Scene) -> Question | None:
    """"Is the <A> the same <attr> as the <B>?" for two distinct unique objects described without attr."""
    objects = scene["objects"]
    want_same = rng.random() < 0.5
    for attr in rng.permutation(list(ATTRIBUTES)):
        attr = str(attr)
        allowed = [a for a in ATTRIBUTES if a != attr]
        described = {}
        for i in _all(scene):
            desc = _unique_description(rng, scene, _all(scene), i, allowed)
            if desc is not None:
                described[i] = desc
        pairs = [(i, j) for i in described for j in described if i != j]
        if not pairs:
            continue
        same = [p for p in pairs if objects[p[0]][attr] == objects[p[1]][attr]]
        different = [p for p in pairs if objects[p[0]][attr] != objects[p[1]][attr]]
        pool = (same if want_same else different) or (different if want_same else same)
        i, j = pool[int(rng.integers(len(pool)))]
        program = _Program()
        a = program.add(f"query_{attr}", [program.unique(described[i])])
        b = program.add(f"query_{attr}", [program.unique(described[j])])
        program.add(f"equal_{attr}", [a, b])
        text = f"Is the {phrase(described[i])} the same {attr} as the {phrase(described[j])}?"
        return _question("compare_attribute", f"equal_{attr}", text, program, scene)
    return None


def _clevr_query(rng: np.random.Generator, scene: Scene) -> Question | None:
    return _query(rng, scene, "query_attribute", ATTRIBUTES)


# The k-th question of an image takes slot (first + k) % 8. Attribute queries take half the slots, the four
# other types one each: S-MAC learns to find the described object and read its colour or shape only from a few
# thousand such questions. Trained on the query_attribute questions of 800 images (CLEVR_demo, 12 epochs), it
# answered 76% of colour and 72% of shape queries with this mix (3,200 queries), and 22% and 40% with one slot
# in five (1,280 queries; chance 12.5% and 33.3%).
CLEVR_TEMPLATES: tuple[tuple[str, Callable[[np.random.Generator, Scene], Question | None]], ...] = (
    ("count", _clevr_count), ("query_attribute", _clevr_query), ("exist", _clevr_exist),
    ("query_attribute", _clevr_query), ("compare_integer", _clevr_compare_integer),
    ("query_attribute", _clevr_query), ("compare_attribute", _clevr_compare_attribute),
    ("query_attribute", _clevr_query),
)


# ----------------------------------------------------------------------------------- TDIUC templates

def _tdiuc_presence(rng: np.random.Generator, scene: Scene) -> Question | None:
    def make() -> Question:
        desc = _random_description(rng, scene, _all(scene))
        program = _Program()
        program.add("exist", [program.select(desc)])
        return _question("object_presence", "exist", f"Is there a {phrase(desc)}?", program, scene)

    return _balanced(rng, make)


def _tdiuc_counting(rng: np.random.Generator, scene: Scene) -> Question | None:
    desc = _random_description(rng, scene, _all(scene))
    program = _Program()
    program.add("count", [program.select(desc)])
    return _question("counting", "count", f"How many {phrase(desc, True)} are in the picture?", program, scene)


def _tdiuc_color(rng: np.random.Generator, scene: Scene) -> Question | None:
    return _query(rng, scene, "color", ("color",))


def _tdiuc_attribute(rng: np.random.Generator, scene: Scene) -> Question | None:
    return _query(rng, scene, "attribute", ("material", "size"))


def _tdiuc_recognition(rng: np.random.Generator, scene: Scene) -> Question | None:
    return _query(rng, scene, "object_recognition", ("shape",))


def _tdiuc_positional(rng: np.random.Generator, scene: Scene) -> Question | None:
    """"What <color|shape> is the <B> <relation> the <A>?" where B singles out one of the objects in
    that relation to the unique object A."""
    for _ in range(8):
        found = _relate_set(rng, scene)
        if found is None:
            return None
        program, node, relation, anchor, related = found
        attr = ("color", "shape")[int(rng.integers(2))]
        allowed = [a for a in ATTRIBUTES if a != attr]
        for target in rng.permutation(related):
            desc = _unique_description(rng, scene, related, int(target), allowed)
            if desc is not None:
                program.add(f"query_{attr}", [program.add("unique", [program.filters(desc, node)])])
                text = f"What {attr} is the {phrase(desc)} {RELATIONS[relation]} the {phrase(anchor)}?"
                return _question("positional_reasoning", f"relate_query_{attr}", text, program, scene)
    return None


def _tdiuc_absurd(rng: np.random.Generator, scene: Scene) -> Question | None:
    noun = ABSURD_NOUNS[int(rng.integers(len(ABSURD_NOUNS)))]
    text = ABSURD_TEMPLATES[int(rng.integers(len(ABSURD_TEMPLATES)))].format(noun)
    return Question("absurd", text, NOT_APPLICABLE, [], "absurd")


TDIUC_TEMPLATES: tuple[tuple[str, Callable[[np.random.Generator, Scene], Question | None]], ...] = (
    ("object_presence", _tdiuc_presence), ("counting", _tdiuc_counting), ("color", _tdiuc_color),
    ("attribute", _tdiuc_attribute), ("object_recognition", _tdiuc_recognition),
    ("positional_reasoning", _tdiuc_positional), ("absurd", _tdiuc_absurd),
)


def questions_for_scene(rng: np.random.Generator, scene: Scene, templates: Sequence[tuple[str, Callable]],
                        count: int, start: int) -> list[Question]:
    """``count`` questions; the k-th one has type ``templates[(start + k) % len]`` or, when the scene
    cannot support it, the next type that works. Texts are distinct within the scene when possible."""
    seen: set[str] = set()
    questions: list[Question] = []
    for k in range(count):
        chosen = None
        for allow_repeat in (False, True):
            for shift in range(len(templates)):
                _, make = templates[(start + k + shift) % len(templates)]
                for _ in range(6):
                    question = make(rng, scene)
                    if question is not None and (allow_repeat or question.text not in seen):
                        chosen = question
                        break
                if chosen is not None:
                    break
            if chosen is not None:
                break
        if chosen is None:
            raise RuntimeError(f"no question could be made for scene {scene['image_filename']}")
        seen.add(chosen.text)
        questions.append(chosen)
    return questions


# -------------------------------------------------------------------------------------------- writing

def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data))


def _check_arguments(num_train_images: int, num_val_images: int, questions_per_image: int, image_size: int) -> None:
    for name, value in (("num_train_images", num_train_images), ("num_val_images", num_val_images)):
        if not 1 <= value < MAX_IMAGES_PER_SPLIT:
            raise ValueError(f"--{name} {value} must be between 1 and {MAX_IMAGES_PER_SPLIT - 1}")
    if not 1 <= questions_per_image <= MAX_QUESTIONS_PER_IMAGE:
        raise ValueError(f"--questions_per_image {questions_per_image} must be between 1 and "
                         f"{MAX_QUESTIONS_PER_IMAGE}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image_size {image_size} must be at least {MIN_IMAGE_SIZE}")


def existing_outputs(out_dir: str | os.PathLike) -> list[Path]:
    """The dataset folders of ``out_dir`` that already exist."""
    return [p for p in (Path(out_dir) / CLEVR_DIR, Path(out_dir) / TDIUC_DIR) if os.path.lexists(p)]


def _write_split(rng: np.random.Generator, stage: Path, split: str, num_images: int, questions_per_image: int,
                 image_size: int, info: dict[str, Any]) -> dict[str, Any]:
    coco_split = f"{split}2014"
    id_base = TRAIN_IMAGE_ID_BASE if split == "train" else VAL_IMAGE_ID_BASE
    clevr_images = stage / CLEVR_DIR / "images" / split
    tdiuc_images = stage / TDIUC_DIR / "Images" / coco_split
    clevr_images.mkdir(parents=True)
    tdiuc_images.mkdir(parents=True)
    scenes, clevr_questions, tdiuc_questions, tdiuc_annotations = [], [], [], []
    for index in range(num_images):
        scene = make_scene(rng, split, index, image_size)
        scenes.append(scene)
        image = render_scene(scene, image_size)
        image.save(clevr_images / scene["image_filename"], format="PNG")
        image_id = id_base + index
        image.save(tdiuc_images / f"COCO_{coco_split}_{image_id:012d}.jpg", format="JPEG", quality=95)
        for question in questions_for_scene(rng, scene, CLEVR_TEMPLATES, questions_per_image,
                                            index * questions_per_image):
            clevr_questions.append({
                "image_index": index, "image_filename": scene["image_filename"], "split": split,
                "question_index": len(clevr_questions), "question": question.text, "answer": question.answer,
                "program": question.program, "question_family_index": CLEVR_FAMILIES.index(question.family),
            })
        for k, question in enumerate(questions_for_scene(rng, scene, TDIUC_TEMPLATES, questions_per_image,
                                                         index * questions_per_image)):
            question_id = image_id * MAX_QUESTIONS_PER_IMAGE + k
            tdiuc_questions.append({"image_id": image_id, "question": question.text, "question_id": question_id})
            tdiuc_annotations.append({
                "image_id": image_id, "question_id": question_id, "question_type": question.qtype,
                "answers": [{"answer": question.answer, "answer_confidence": "yes", "answer_id": 1}],
                "ans_source": "generation", "question_family": question.family,
            })
    clevr_info = {"split": split, "version": "1.0", "date": "synthetic", "license": "MIT", **info}
    write_json_atomic(stage / CLEVR_DIR / "scenes" / f"CLEVR_{split}_scenes.json",
                      {"info": clevr_info, "scenes": scenes})
    write_json_atomic(stage / CLEVR_DIR / "questions" / f"CLEVR_{split}_questions.json",
                      {"info": clevr_info, "questions": clevr_questions})
    tdiuc_info = {"description": "synthetic CLEVR-style scenes in the TDIUC layout", "version": "1.0", **info}
    license_ = {"name": "MIT", "url": "https://opensource.org/licenses/MIT"}
    write_json_atomic(stage / TDIUC_DIR / "Questions" / f"OpenEnded_mscoco_{coco_split}_questions.json",
                      {"info": tdiuc_info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license_,
                       "data_subtype": coco_split, "questions": tdiuc_questions})
    write_json_atomic(stage / TDIUC_DIR / "Annotations" / f"mscoco_{coco_split}_annotations.json",
                      {"info": tdiuc_info, "license": license_, "data_subtype": coco_split,
                       "annotations": tdiuc_annotations})
    clevr_types = {t: 0 for t in CLEVR_QUESTION_TYPES}
    for q in clevr_questions:
        clevr_types[clevr_question_type(q["program"])] += 1
    tdiuc_types = {t: 0 for t in TDIUC_QUESTION_TYPES}
    for a in tdiuc_annotations:
        tdiuc_types[a["question_type"]] += 1
    return {"images": num_images, "clevr_questions": len(clevr_questions), "tdiuc_questions": len(tdiuc_questions),
            "clevr_types": clevr_types, "tdiuc_types": tdiuc_types}


def generate_scenes(out_dir: str | os.PathLike, num_images: int, image_size: int = 128, seed: int = 0,
                    overwrite: bool = False) -> dict[str, Any]:
    """Write ``OUT/pretrain_scenes/images/SCENE_{index:06d}.png`` and ``OUT/pretrain_scenes/scenes.json``.

    Scenes only (CLEVR's scene-JSON format, split "pretrain"), drawn from their own generator, so the train
    and val data of :func:`generate` with the same seed do not change. Same refusal rules as :func:`generate`.
    """
    if not 1 <= num_images < MAX_IMAGES_PER_SPLIT:
        raise ValueError(f"--num_pretrain_images {num_images} must be between 1 and {MAX_IMAGES_PER_SPLIT - 1}")
    _check_arguments(1, 1, 1, image_size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    target = out / PRETRAIN_DIR
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{target} exists")
    rng = np.random.default_rng([seed, 1])  # independent of the question splits' generator
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".make_synthetic_vqa-"))
    try:
        (stage / "images").mkdir()
        scenes = []
        for index in range(num_images):
            scene = make_scene(rng, "pretrain", index, image_size)
            scene["image_filename"] = f"SCENE_{index:06d}.png"
            render_scene(scene, image_size).save(stage / "images" / scene["image_filename"], format="PNG")
            scenes.append(scene)
        info = {"split": "pretrain", "generator": "vqa_experiments.make_synthetic_vqa", "seed": seed,
                "image_size": image_size}
        write_json_atomic(stage / "scenes.json", {"info": info, "scenes": scenes})
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()
        os.replace(stage, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"images": num_images, "folder": str(target)}


def generate(out_dir: str | os.PathLike, num_train_images: int = 600, num_val_images: int = 200,
             questions_per_image: int = 10, image_size: int = 128, seed: int = 0,
             overwrite: bool = False) -> dict[str, Any]:
    """Write ``OUT/CLEVR_v1.0`` and ``OUT/TDIUC`` (see the module docstring).

    Raises FileExistsError when either exists and ``overwrite`` is false (nothing is written), ValueError
    on bad sizes. Returns ``{"out_dir", "train": counts, "val": counts}`` where counts holds "images",
    "clevr_questions", "tdiuc_questions", "clevr_types" and "tdiuc_types" (questions per type).
    """
    _check_arguments(num_train_images, num_val_images, questions_per_image, image_size)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    existing = existing_outputs(out)
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists")
    rng = np.random.default_rng(seed)
    info = {"generator": "vqa_experiments.make_synthetic_vqa", "seed": seed, "image_size": image_size,
            "questions_per_image": questions_per_image}
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".make_synthetic_vqa-"))
    try:
        summary: dict[str, Any] = {"out_dir": str(out)}
        for split, num_images in (("train", num_train_images), ("val", num_val_images)):
            summary[split] = _write_split(rng, stage, split, num_images, questions_per_image, image_size, info)
        for name in (CLEVR_DIR, TDIUC_DIR):
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()
            os.replace(stage / name, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic_vqa", help="folder to write CLEVR_v1.0/ and TDIUC/ into")
    p.add_argument("--num_train_images", type=int, default=600, help="training scenes (600)")
    p.add_argument("--num_val_images", type=int, default=200, help="validation scenes (200)")
    p.add_argument("--questions_per_image", type=int, default=10,
                   help="questions per scene, for CLEVR and for TDIUC each (10)")
    p.add_argument("--image_size", type=int, default=128, help="side of the square images in pixels (128)")
    p.add_argument("--num_pretrain_images", type=int, default=0,
                   help=f"also write this many question-free scenes to {PRETRAIN_DIR}/ (a trunk's training data)")
    p.add_argument("--seed", type=int, default=0, help="seed of scenes and questions (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CLEVR_v1.0/ and TDIUC/ in --out")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)

    def body() -> None:
        try:
            if args.num_pretrain_images and os.path.lexists(Path(args.out) / PRETRAIN_DIR) and not args.overwrite:
                raise FileExistsError(f"{Path(args.out) / PRETRAIN_DIR} exists")
            summary = generate(args.out, args.num_train_images, args.num_val_images, args.questions_per_image,
                               args.image_size, args.seed, overwrite=args.overwrite)
            if args.num_pretrain_images:
                pretrain = generate_scenes(args.out, args.num_pretrain_images, args.image_size, args.seed,
                                           overwrite=True)
        except FileExistsError as exc:
            if exc.strerror:  # from the file system, not our refusal
                raise
            raise ValueError(f"{exc}; pass --overwrite or choose another --out") from None
        train, val = summary["train"], summary["val"]
        print(f"wrote {train['images']} train + {val['images']} val images, "
              f"{train['clevr_questions'] + val['clevr_questions']} CLEVR and "
              f"{train['tdiuc_questions'] + val['tdiuc_questions']} TDIUC questions under {args.out}")
        if args.num_pretrain_images:
            print(f"wrote {pretrain['images']} question-free scenes to {pretrain['folder']}")
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
