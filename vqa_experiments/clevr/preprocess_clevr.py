"""Pre-process CLEVR's questions into the tables ``vqa_trainer.py`` reads.

Reads ``{path}/questions/CLEVR_{train,val}_questions.json`` (CLEVR v1.0's own
files) and writes, into ``--out``: ``LUT_clevr.json`` (answers and the 5
question types, most frequent first), ``dictionary_clevr.json`` and
``{train,val}_clevr.npz``. A question's type is the last function of its
program (count, exist, compare_integer, compare_attribute, query_attribute).

    python -m vqa_experiments.clevr.preprocess_clevr --path /data/CLEVR_v1.0 --out /data/CLEVR_v1.0
"""
from __future__ import annotations

import sys
from pathlib import Path

from vqa_experiments.vqa_data import CLEVR_FUNCTION_TO_TYPE, QuestionRecord, VQADataError, check_fields, \
    preprocess_main, read_json

# The fields each CLEVR question must hold, and their JSON types (the test split has no answer: refused)
CLEVR_FIELDS = {"question_index": int, "image_index": int, "question": str, "answer": str, "program": list}


def clevr_image_id(split: str, image_index: int) -> int:
    """The original's image ids: '1' + index for train, '2' + index for val (unique over both splits)."""
    return int({"train": "1", "val": "2"}[split] + str(int(image_index)))


def read_split(path: Path, split: str) -> list[QuestionRecord]:
    file = path / "questions" / f"CLEVR_{split}_questions.json"
    data = read_json(file, f"CLEVR {split} questions")
    records = []
    try:
        for position, entry in enumerate(data["questions"]):
            check_fields(entry, CLEVR_FIELDS, file, position)
            function = entry["program"][-1]["function"]
            if function not in CLEVR_FUNCTION_TO_TYPE:
                raise VQADataError(f"{file}: question {entry['question_index']} ends in unknown function {function!r}")
            records.append(QuestionRecord(qid=int(entry["question_index"]),
                                          iid=clevr_image_id(split, entry["image_index"]),
                                          question=entry["question"], answers=[str(entry["answer"])],
                                          qtype=CLEVR_FUNCTION_TO_TYPE[function]))
    except (KeyError, IndexError, TypeError) as exc:
        raise VQADataError(f"{file} is not a CLEVR question file (missing {exc}); the test split has no answers "
                           "and cannot be used") from None
    if not records:
        raise VQADataError(f"{file} holds no questions")
    return records


def main(argv=None) -> int:
    return preprocess_main("clevr", read_split, argv, __doc__, "CLEVR_v1.0 folder (holds questions/ and images/)")


if __name__ == "__main__":
    sys.exit(main())
