"""Pre-process TDIUC's questions into the tables ``vqa_trainer.py`` reads.

Reads TDIUC's own files, ``{path}/Questions/OpenEnded_mscoco_{split}2014_questions.json``
and ``{path}/Annotations/mscoco_{split}2014_annotations.json``, and writes into
``--out``: ``LUT_tdiuc.json`` (answers and question types, most frequent
first; TDIUC has 12 types), ``dictionary_tdiuc.json`` and ``{train,val}_tdiuc.npz``.

    python -m vqa_experiments.tdiuc.preprocess_tdiuc --path /data/TDIUC --out /data/TDIUC
"""
from __future__ import annotations

import sys
from pathlib import Path

from vqa_experiments.vqa_data import QuestionRecord, VQADataError, check_fields, preprocess_main, read_json


def check_annotation(ann, afile: Path, position: int) -> None:
    """An annotation's ids, type and every answer of the right JSON type (a null answer would become "None")."""
    check_fields(ann, {"question_id": int, "image_id": int, "question_type": str, "answers": list}, afile, position,
                 "annotation")
    for answer in ann["answers"]:
        check_fields(answer, {"answer": str}, afile, position, "annotation")


def read_split(path: Path, split: str) -> list[QuestionRecord]:
    qfile = path / "Questions" / f"OpenEnded_mscoco_{split}2014_questions.json"
    afile = path / "Annotations" / f"mscoco_{split}2014_annotations.json"
    questions = read_json(qfile, f"TDIUC {split} questions")
    annotations = read_json(afile, f"TDIUC {split} annotations")
    try:
        for position, question in enumerate(questions["questions"]):
            check_fields(question, {"question_id": int, "question": str}, qfile, position)
        text = {int(q["question_id"]): q["question"] for q in questions["questions"]}
        records = []
        for position, ann in enumerate(annotations["annotations"]):
            check_annotation(ann, afile, position)
            qid = int(ann["question_id"])
            if qid not in text:
                raise VQADataError(f"{afile}: question {qid} is not in {qfile}; the two files are from different "
                                   "TDIUC versions")
            records.append(QuestionRecord(qid=qid, iid=int(ann["image_id"]), question=text[qid],
                                          answers=[str(a["answer"]) for a in ann["answers"]],
                                          qtype=str(ann["question_type"])))
    except (KeyError, TypeError) as exc:
        raise VQADataError(f"{qfile} / {afile} are not TDIUC files (missing {exc})") from None
    if not records:
        raise VQADataError(f"{afile} holds no annotations")
    return records


def main(argv=None) -> int:
    return preprocess_main("tdiuc", read_split, argv, __doc__, "TDIUC folder (holds Questions/, Annotations/, Images/)")


if __name__ == "__main__":
    sys.exit(main())
