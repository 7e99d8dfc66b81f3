"""The synthetic CLEVR / TDIUC generator: file layouts, determinism, and answers checked against the
scenes by an interpreter and a question-text reader written here, independently of the generator."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vqa_experiments.make_synthetic_vqa import generate, main
from helpers import CLEVR_TYPE, TDIUC_TYPES

REPO = Path(__file__).resolve().parents[1]
TRAIN, VAL, QPI, SIZE = 12, 4, 10, 64
SPLITS = {"train": TRAIN, "val": VAL}
ID_BASE = {"train": 1_000_000, "val": 2_000_000}

SIZES, MATERIALS = ("small", "large"), ("rubber", "metal")
COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
WORDS = {**{v: ("size", v) for v in SIZES}, **{v: ("material", v) for v in MATERIALS},
         **{v: ("color", v) for v in COLORS}, **{v: ("shape", v) for v in SHAPES},
         **{v + "s": ("shape", v) for v in SHAPES}, "thing": None, "things": None}
RELATION_WORDS = {"left of": "left", "right of": "right", "in front of": "front", "behind": "behind"}


def clevr_paths(root: Path, split: str) -> dict[str, Path]:
    base = root / "CLEVR_v1.0"
    return {"images": base / "images" / split, "scenes": base / "scenes" / f"CLEVR_{split}_scenes.json",
            "questions": base / "questions" / f"CLEVR_{split}_questions.json"}


def tdiuc_paths(root: Path, split: str) -> dict[str, Path]:
    base = root / "TDIUC"
    return {"images": base / "Images" / f"{split}2014",
            "questions": base / "Questions" / f"OpenEnded_mscoco_{split}2014_questions.json",
            "annotations": base / "Annotations" / f"mscoco_{split}2014_annotations.json"}


def json_files(root: Path) -> list[Path]:
    return sorted(p for split in SPLITS for paths in (clevr_paths(root, split), tdiuc_paths(root, split))
                  for key, p in paths.items() if key != "images")


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def make(root: Path, seed: int = 0) -> dict:
    return generate(root, num_train_images=TRAIN, num_val_images=VAL, questions_per_image=QPI, image_size=SIZE,
                    seed=seed)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vqa") / "synthetic_vqa"
    make(out)
    return out


# ------------------------------------------------------------------------------- independent checkers

class Ambiguous(Exception):
    pass


def run_program(program: list[dict], scene: dict) -> Any:
    objects, rel = scene["objects"], scene["relationships"]
    out: list[Any] = []
    for node in program:
        fn, args, vals = node["function"], [out[i] for i in node["inputs"]], node["value_inputs"]
        assert all(i < len(out) for i in node["inputs"])
        if fn == "scene":
            value: Any = set(range(len(objects)))
        elif fn in ("filter_color", "filter_shape", "filter_size", "filter_material"):
            value = {i for i in args[0] if objects[i][fn.split("_")[1]] == vals[0]}
        elif fn == "unique":
            if len(args[0]) != 1:
                raise Ambiguous(program)
            (value,) = args[0]
        elif fn == "relate":
            value = set(rel[vals[0]][args[0]])
        elif fn == "count":
            value = len(args[0])
        elif fn == "exist":
            value = "yes" if args[0] else "no"
        elif fn in ("query_color", "query_shape", "query_size", "query_material"):
            value = objects[args[0]][fn.split("_")[1]]
        elif fn in ("equal_color", "equal_shape", "equal_size", "equal_material", "equal_integer"):
            value = "yes" if args[0] == args[1] else "no"
        elif fn == "greater_than":
            value = "yes" if args[0] > args[1] else "no"
        elif fn == "less_than":
            value = "yes" if args[0] < args[1] else "no"
        else:
            raise AssertionError(f"unexpected function {fn}")
        out.append(value)
    return str(out[-1])


def matching(scene: dict, phrase: str, among: set[int] | None = None) -> set[int]:
    """The objects that a phrase such as "large red metal cubes" describes."""
    wanted = [WORDS[w] for w in phrase.split()]
    assert sum(w is None or w[0] == "shape" for w in wanted) == 1, phrase  # exactly one noun
    wanted = [w for w in wanted if w is not None]
    candidates = range(len(scene["objects"])) if among is None else among
    return {i for i in candidates if all(scene["objects"][i][a] == v for a, v in wanted)}


def the(scene: dict, phrase: str, among: set[int] | None = None) -> int:
    found = matching(scene, phrase, among)
    if len(found) != 1:
        raise Ambiguous(phrase)
    return found.pop()


def related(scene: dict, phrase: str) -> tuple[str, set[int]] | None:
    """"<target> left of the <anchor>" -> (target, objects left of the anchor); None without a relation."""
    for words, relation in RELATION_WORDS.items():
        m = re.fullmatch(rf"(.+) {words} the (.+)", phrase)
        if m:
            return m.group(1), set(scene["relationships"][relation][the(scene, m.group(2))])
    return None


def answer_from_text(question: str, scene: dict) -> str:
    """Read a generated question as English and answer it from the scene."""
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    objects = scene["objects"]
    if m := re.fullmatch(r"How many (.+) are (?:there|in the picture)\?", question):
        return str(len(matching(scene, m.group(1))))
    if m := re.fullmatch(r"How many (.+) are (.+)\?", question):
        target, among = related(scene, f"{m.group(1)} {m.group(2)}")
        return str(len(matching(scene, target, among)))
    if m := re.fullmatch(r"Are there any (.+)\?", question):
        rel = related(scene, m.group(1))
        return yes(matching(scene, *rel) if rel else matching(scene, m.group(1)))
    if m := re.fullmatch(r"Is there a (.+)\?", question):
        return yes(matching(scene, m.group(1)))
    if m := re.fullmatch(r"Are there (more|fewer) (.+) than (.+)\?", question):
        a, b = len(matching(scene, m.group(2))), len(matching(scene, m.group(3)))
        return yes(a > b if m.group(1) == "more" else a < b)
    if m := re.fullmatch(r"Are there the same number of (.+) and (.+)\?", question):
        return yes(len(matching(scene, m.group(1))) == len(matching(scene, m.group(2))))
    if m := re.fullmatch(r"Is the (.+) the same (color|shape|size|material) as the (.+)\?", question):
        attr = m.group(2)
        return yes(objects[the(scene, m.group(1))][attr] == objects[the(scene, m.group(3))][attr])
    if m := re.fullmatch(r"What (color|shape|size|material) is the (.+)\?", question):
        rel = related(scene, m.group(2))
        return objects[the(scene, *rel) if rel else the(scene, m.group(2))][m.group(1)]
    raise AssertionError(f"unreadable question {question!r}")


# ---------------------------------------------------------------------------------------------- tests

def test_layout_and_keys(root: Path):
    for split, n in SPLITS.items():
        clevr, tdiuc = clevr_paths(root, split), tdiuc_paths(root, split)
        assert sorted(p.name for p in clevr["images"].iterdir()) == [f"CLEVR_{split}_{i:06d}.png" for i in range(n)]
        assert sorted(p.name for p in tdiuc["images"].iterdir()) == [
            f"COCO_{split}2014_{ID_BASE[split] + i:012d}.jpg" for i in range(n)]
        scenes = load(clevr["scenes"])
        assert set(scenes) == {"info", "scenes"} and len(scenes["scenes"]) == n
        for index, scene in enumerate(scenes["scenes"]):
            assert (scene["image_index"], scene["image_filename"], scene["split"]) == (
                index, f"CLEVR_{split}_{index:06d}.png", split)
            assert 3 <= len(scene["objects"]) <= 6
            for obj in scene["objects"]:
                assert {"color", "shape", "material", "size", "3d_coords", "pixel_coords"} <= set(obj)
                assert (obj["color"], obj["shape"], obj["material"], obj["size"]) in [
                    (c, s, m, z) for c in COLORS for s in SHAPES for m in MATERIALS for z in SIZES]
                assert len(obj["3d_coords"]) == 3 and len(obj["pixel_coords"]) == 3
            assert set(scene["relationships"]) == {"left", "right", "front", "behind"}
        questions = load(clevr["questions"])
        assert questions["info"]["split"] == split and questions["info"]["version"] == "1.0"
        assert [q["question_index"] for q in questions["questions"]] == list(range(n * QPI))
        for q in questions["questions"]:
            assert set(q) == {"image_index", "image_filename", "split", "question_index", "question", "answer",
                              "program", "question_family_index"}
            assert q["split"] == split and q["image_filename"] == f"CLEVR_{split}_{q['image_index']:06d}.png"
            assert isinstance(q["question_family_index"], int)
            assert all(set(node) == {"function", "inputs", "value_inputs"} for node in q["program"])
        tq, ta = load(tdiuc["questions"]), load(tdiuc["annotations"])
        assert {"info", "task_type", "data_type", "license", "data_subtype", "questions"} <= set(tq)
        assert (tq["task_type"], tq["data_type"], tq["data_subtype"]) == ("Open-Ended", "mscoco", f"{split}2014")
        assert {"info", "license", "data_subtype", "annotations"} <= set(ta) and ta["data_subtype"] == f"{split}2014"
        assert len(tq["questions"]) == len(ta["annotations"]) == n * QPI
        for q, a in zip(tq["questions"], ta["annotations"]):
            assert set(q) == {"image_id", "question", "question_id"}
            assert (a["image_id"], a["question_id"]) == (q["image_id"], q["question_id"])
            assert a["ans_source"] == "generation" and len(a["answers"]) == 1
            assert a["answers"][0]["answer_confidence"] == "yes" and a["answers"][0]["answer_id"] == 1
            assert (tdiuc["images"] / f"COCO_{split}2014_{q['image_id']:012d}.jpg").exists()
    ids = [q["question_id"] for s in SPLITS for q in load(tdiuc_paths(root, s)["questions"])["questions"]]
    assert len(ids) == len(set(ids))
    assert not [p for p in root.iterdir() if p.name not in ("CLEVR_v1.0", "TDIUC")]  # no staging left


def test_images_are_rgb_of_the_requested_size(root: Path):
    for split in SPLITS:
        for folder in (clevr_paths(root, split)["images"], tdiuc_paths(root, split)["images"]):
            for path in folder.iterdir():
                with Image.open(path) as image:
                    assert image.size == (SIZE, SIZE) and image.mode == "RGB"
                    assert image.format == ("PNG" if path.suffix == ".png" else "JPEG")


def test_objects_inside_image_not_overlapping_and_relationships(root: Path):
    from vqa_experiments.make_synthetic_vqa import object_radius

    for split in SPLITS:
        for scene in load(clevr_paths(root, split)["scenes"])["scenes"]:
            boxes = [(o["pixel_coords"][0], o["pixel_coords"][1], object_radius(o["size"], SIZE))
                     for o in scene["objects"]]
            assert object_radius("large", 128) == 18 and object_radius("small", 128) == 10
            for k, (x, y, r) in enumerate(boxes):
                assert r <= x < SIZE - r and r <= y < SIZE - r
                for x2, y2, r2 in boxes[k + 1:]:
                    assert abs(x - x2) >= r + r2 or abs(y - y2) >= r + r2
            n = len(boxes)
            for i, (x, y, _) in enumerate(boxes):
                rel = scene["relationships"]
                assert sorted(rel["left"][i]) == [j for j in range(n) if boxes[j][0] < x]
                assert sorted(rel["right"][i]) == [j for j in range(n) if boxes[j][0] > x]
                assert sorted(rel["front"][i]) == [j for j in range(n) if boxes[j][1] > y]
                assert sorted(rel["behind"][i]) == [j for j in range(n) if boxes[j][1] < y]


def test_same_seed_same_files_other_seed_differs(root: Path, tmp_path: Path):
    make(tmp_path / "again", seed=0)
    make(tmp_path / "other", seed=1)
    for path in json_files(root):
        relative = path.relative_to(root)
        assert (tmp_path / "again" / relative).read_bytes() == path.read_bytes()
        assert load(tmp_path / "other" / relative) != load(path)
    image = Path("CLEVR_v1.0/images/train/CLEVR_train_000000.png")
    assert (tmp_path / "again" / image).read_bytes() == (root / image).read_bytes()
    assert (tmp_path / "other" / image).read_bytes() != (root / image).read_bytes()
    for split in SPLITS:
        a = load(root / clevr_paths(root, split)["questions"].relative_to(root))["questions"]
        b = load(tmp_path / "other" / clevr_paths(root, split)["questions"].relative_to(root))["questions"]
        assert [q["question"] for q in a] != [q["question"] for q in b]


def test_clevr_answers_match_programs_and_text(root: Path):
    for split in SPLITS:
        scenes = load(clevr_paths(root, split)["scenes"])["scenes"]
        for q in load(clevr_paths(root, split)["questions"])["questions"]:
            scene = scenes[q["image_index"]]
            assert run_program(q["program"], scene) == q["answer"], q
            assert answer_from_text(q["question"], scene) == q["answer"], q
            assert re.fullmatch(r"[A-Z][a-z ]*\?", q["question"]), q["question"]
            assert q["program"][0]["function"] == "scene"
            words = q["question"].rstrip("?").split()
            spoken = {RELATION_WORDS[w] for w in RELATION_WORDS if f" {w} the " in q["question"]}
            spoken |= {w for w in words} | {w[:-1] for w in words if w.endswith("s")}
            for node in q["program"]:  # every filter / relation value is said in the text
                assert set(node["value_inputs"]) <= spoken, (node, q["question"])
            if CLEVR_TYPE[q["program"][-1]["function"]] in ("exist", "compare_integer", "compare_attribute"):
                assert q["answer"] in ("yes", "no")
            if CLEVR_TYPE[q["program"][-1]["function"]] == "count":
                assert q["answer"] in [str(k) for k in range(11)]


def test_tdiuc_answers_match_text(root: Path):
    for split in SPLITS:
        scenes = load(clevr_paths(root, split)["scenes"])["scenes"]
        questions = load(tdiuc_paths(root, split)["questions"])["questions"]
        annotations = load(tdiuc_paths(root, split)["annotations"])["annotations"]
        for q, a in zip(questions, annotations):
            scene = scenes[q["image_id"] - ID_BASE[split]]
            answer, qtype = a["answers"][0]["answer"], a["question_type"]
            assert re.fullmatch(r"[A-Z][a-z ]*\?", q["question"]), q["question"]
            if qtype == "absurd":
                assert answer == "doesnotapply"
                assert not set(q["question"].rstrip("?").split()) & set(WORDS)
                continue
            assert answer_from_text(q["question"], scene) == answer, (q, a)
            allowed = {"object_presence": {"yes", "no"}, "counting": {str(k) for k in range(11)},
                       "color": set(COLORS), "attribute": set(SIZES) | set(MATERIALS),
                       "object_recognition": set(SHAPES), "positional_reasoning": set(COLORS) | set(SHAPES)}
            assert answer in allowed[qtype], (qtype, answer)
            if qtype == "positional_reasoning":
                assert any(f" {w} the " in q["question"] for w in RELATION_WORDS)


def test_all_types_present_roughly_balanced_and_yes_no_mixed(root: Path):
    clevr_types: Counter = Counter()
    yes_no: dict[str, Counter] = {}
    tdiuc_types: Counter = Counter()
    for split in SPLITS:
        for q in load(clevr_paths(root, split)["questions"])["questions"]:
            qtype = CLEVR_TYPE[q["program"][-1]["function"]]
            clevr_types[qtype] += 1
            yes_no.setdefault(qtype, Counter())[q["answer"]] += 1
        for a in load(tdiuc_paths(root, split)["annotations"])["annotations"]:
            tdiuc_types[a["question_type"]] += 1
            yes_no.setdefault(a["question_type"], Counter())[a["answers"][0]["answer"]] += 1
    total = (TRAIN + VAL) * QPI
    assert set(clevr_types) == set(CLEVR_TYPE.values())
    share = {t: (4 if t == "query_attribute" else 1) / 8 for t in clevr_types}  # half are attribute queries
    assert all(abs(c - total * share[t]) <= 0.05 * total for t, c in clevr_types.items()), clevr_types
    assert set(tdiuc_types) == TDIUC_TYPES
    assert all(abs(c - total / 7) <= 0.05 * total for c in tdiuc_types.values()), tdiuc_types
    for qtype in ("exist", "compare_integer", "compare_attribute", "object_presence"):
        assert set(yes_no[qtype]) == {"yes", "no"}, (qtype, yes_no[qtype])
        assert min(yes_no[qtype].values()) >= 0.25 * sum(yes_no[qtype].values()), (qtype, yes_no[qtype])


def test_summary_counts(tmp_path: Path):
    summary = generate(tmp_path, num_train_images=3, num_val_images=2, questions_per_image=7, image_size=48, seed=5)
    assert summary["train"]["images"] == 3 and summary["val"]["images"] == 2
    assert summary["train"]["clevr_questions"] == summary["train"]["tdiuc_questions"] == 21
    assert sum(summary["val"]["tdiuc_types"].values()) == 14 and sum(summary["val"]["clevr_types"].values()) == 14


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_refuses_to_overwrite_then_overwrites(tmp_path: Path, capsys):
    out = tmp_path / "data"
    argv = ["--out", str(out), "--num_train_images", "2", "--num_val_images", "1", "--questions_per_image", "3",
            "--image_size", "32"]
    assert main(argv) == 0
    capsys.readouterr()
    (out / "CLEVR_v1.0" / "stale.txt").write_text("left from an older run")
    before = snapshot(out)
    assert main(argv + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "exists; pass --overwrite or choose another --out" in err
    assert snapshot(out) == before
    assert main(argv + ["--seed", "1", "--overwrite"]) == 0
    after = snapshot(out)
    assert "CLEVR_v1.0/stale.txt" not in after
    changed = "CLEVR_v1.0/scenes/CLEVR_train_scenes.json"
    assert after[changed][0] != before[changed][0]
    assert sorted(p.name for p in out.iterdir()) == ["CLEVR_v1.0", "TDIUC"]


def test_cli_exit_code_2_when_only_one_dataset_exists(tmp_path: Path):
    (tmp_path / "TDIUC").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "vqa_experiments.make_synthetic_vqa", "--out", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'TDIUC'} exists; pass --overwrite or choose another --out\n"
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TDIUC"] and not any((tmp_path / "TDIUC").iterdir())


def test_bad_sizes_are_refused(tmp_path: Path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--image_size", "16"]) == 2
    assert capsys.readouterr().err.startswith("error: --image_size 16")
    assert not (tmp_path / "x").exists()
