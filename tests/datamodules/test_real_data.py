"""Integration: the real data under DATA_DIR loads with the official counts (skipped without it).

Run: DATA_DIR=/work/shared/data .venv/bin/python -m pytest -q -s -m integration tests/datamodules/test_real_data.py
"""
from collections import Counter
from pathlib import Path

import pytest

from datamodules.glue import GLUE_TASKS, GLUEDataModule
from datamodules.squad import SQuADDataModule
from tests.conftest import REAL_DATA_DIR, requires_real_data

pytestmark = pytest.mark.integration
TOKENIZER = "packaged:all-minilm-l6-v2"

# task -> {split: (rows, label counts in label-list order, or None)} from /work/shared/data/README.md
OFFICIAL = {
    "sst2": {"train": (67349, [29780, 37569]), "dev": (872, [428, 444])},
    "mrpc": {"train": (3668, [1194, 2474]), "dev": (408, [129, 279])},
    "cola": {"train": (8551, [2528, 6023]), "dev": (1043, [322, 721])},
    "stsb": {"train": (5749, None), "dev": (1500, None)},
    "rte": {"train": (2490, [1249, 1241]), "dev": (277, [146, 131])},
    "wnli": {"train": (635, [323, 312]), "dev": (71, [40, 31])},
    "qnli": {"dev": (5463, [2702, 2761])},
}


@requires_real_data("glue")
@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_glue_official_counts(task):
    folder = Path(REAL_DATA_DIR) / "glue" / GLUE_TASKS[task].folder
    if not folder.is_dir():
        pytest.skip(f"{folder} is not in this DATA_DIR")
    dm = GLUEDataModule(TOKENIZER, task, data_dir=REAL_DATA_DIR, num_proc=2)
    for split, (rows, label_counts) in OFFICIAL[task].items():
        dataset = dm.load_split(split)
        labels = list(dataset["labels"])
        print(f"{task} {split}: {len(dataset)} rows")
        assert len(dataset) == rows
        if label_counts is None:
            assert all(0.0 <= y <= 5.0 for y in labels)
        else:
            counts = Counter(labels)
            assert [counts[i] for i in range(dm.num_labels)] == label_counts


@requires_real_data("squad/dev-v1.1.json")
def test_squad_dev_v11_examples_and_features():
    dm = SQuADDataModule(TOKENIZER, eval_file="squad/dev-v1.1.json", eval_articles=None, data_dir=REAL_DATA_DIR,
                         max_seq_length=384, doc_stride=128, num_proc=2)
    dm.setup("validate")
    n_examples, n_features = len(dm.eval_examples), len(dm.eval_features)
    print(f"SQuAD dev-v1.1: {n_examples} examples -> {n_features} features (max_seq_length 384, stride 128, "
          f"{TOKENIZER})")
    assert n_examples == 10570 and dm.task_name == "squad"
    assert 10_600 < n_features < 11_100  # REFERENCE.md: roughly 10.8k
    positions = list(dm.eval_features["start_positions"])
    print(f"SQuAD dev-v1.1: {sum(p == 0 for p in positions)} features with the answer outside the window (CLS)")
