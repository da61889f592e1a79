"""SQuADDataModule: windows over long contexts, answer positions, unanswerable -> CLS, article ranges, errors."""
import json

import pytest

from datamodules.files import DataFormatError
from datamodules.squad import SQuADDataModule
from tests import fixtures


@pytest.fixture
def squad_dm(tmp_path, wordpiece_tokenizer_dir):
    def make(path, **kwargs):
        kwargs.setdefault("tokenizer", str(wordpiece_tokenizer_dir))
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        kwargs.setdefault("train_articles", None)
        kwargs.setdefault("eval_articles", None)
        return SQuADDataModule(train_file=str(path), eval_file=str(path), batch_size=4, **kwargs)
    return make


@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
@pytest.mark.parametrize("v2", [False, True])
def test_windows_positions_and_offsets(squad_dm, tmp_path, request, tokenizer, v2):
    path = fixtures.write_squad(tmp_path / "long.json", long_context=True, with_impossible=v2)
    tok_dir = request.getfixturevalue(f"{tokenizer}_tokenizer_dir")
    dm = squad_dm(path, tokenizer=str(tok_dir), max_seq_length=64, doc_stride=16)
    assert dm.task_name == ("squad_v2" if v2 else "squad") and dm.num_labels is None
    dm.setup("fit")
    examples, features = dm.eval_examples, dm.eval_features
    assert len(examples) == (8 if v2 else 4)
    assert len(features) > 3 * len(examples)  # several windows per long context
    assert list(features["feature_index"]) == list(range(len(features)))
    assert sorted(set(features["example_index"])) == list(range(len(examples)))
    found = set()
    for f in features:
        ex = examples[f["example_index"]]
        assert len(f["input_ids"]) <= 64
        offsets, s, e = f["offset_mapping"], f["start_positions"], f["end_positions"]
        assert offsets[0] is None  # CLS / question tokens are outside the context
        if ex["is_impossible"]:
            assert s == e == 0
        elif s != 0:
            assert ex["context"][offsets[s][0]:offsets[e][1]] == ex["answers"]["text"][0]
            decoded = dm.tokenizer.decode(f["input_ids"][s:e + 1]).strip()
            assert decoded.lower() == ex["answers"]["text"][0].lower()
            found.add(f["example_index"])
        else:
            assert e == 0  # answer outside this window -> CLS for both
    assert found == {i for i, ex in enumerate(examples) if not ex["is_impossible"]}
    assert sum(ex["is_impossible"] for ex in examples) == (4 if v2 else 0)
    batch = next(iter(dm.val_dataloader()))
    assert batch["feature_index"].tolist() == [0, 1, 2, 3] and "offset_mapping" not in batch
    train_batch = next(iter(dm.train_dataloader()))
    assert {"start_positions", "end_positions"} <= set(train_batch) and "offset_mapping" not in train_batch
    # the windows' rows in the training split, in the shuffled order (keys of the cached teacher logits)
    for i, ids, mask in zip(*(train_batch[k].tolist() for k in ("feature_index", "input_ids", "attention_mask"))):
        assert [t for t, m in zip(ids, mask) if m] == dm.train_dataset[i]["input_ids"]


def test_article_ranges_and_max_samples(squad_dm, tmp_path):
    path = fixtures.write_squad(tmp_path / "s.json", n_articles=3)
    dm = squad_dm(path, train_articles=[0, 2], eval_articles=[2, 3], max_seq_length=256, doc_stride=64)
    dm.setup("fit")
    assert len(dm.eval_examples) == 2 and set(dm.eval_examples["title"]) == {"Article_2"}
    assert len(dm.train_dataset) == 4  # short contexts: one window per question
    dm = squad_dm(path, train_articles=[0, 2], max_train_samples=3, max_seq_length=256, doc_stride=64)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3


def test_real_layout_defaults_and_v2_detection(data_dir, wordpiece_tokenizer_dir, tmp_path):
    """Defaults read squad/dev-v1.1.json under data_dir; `is_impossible` in the file means v2."""
    dm = SQuADDataModule(str(wordpiece_tokenizer_dir), eval_file="squad/dev-v2.0.json", eval_articles=None,
                         data_dir=str(data_dir), cache_dir=str(tmp_path))
    assert dm.task_name == "squad_v2" and dm.version_2_with_negative
    with pytest.raises(ValueError, match=r"article range \[0, 38\] is not within the 2 articles of .*dev-v1.1.json"):
        dm.setup("fit")


def test_version_follows_unanswerable_questions_and_is_printed_once(squad_dm, tmp_path, capsys):
    """v2.0 scoring (the null answer) only where questions are unanswerable: a file whose answerable questions carry
    `is_impossible: false` and say "version": "v2.0" is scored as v1.1 (v2.0 scoring made every prediction null)."""
    data = fixtures.squad_json(with_impossible=True)
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [qa for qa in paragraph["qas"] if not qa["is_impossible"]]
    answerable = tmp_path / "answerable.json"
    answerable.write_text(json.dumps(data))
    assert data["version"] == "v2.0" and all(qa["is_impossible"] is False for a in data["data"]
                                             for p in a["paragraphs"] for qa in p["qas"])
    dm = squad_dm(answerable)
    assert dm.task_name == "squad" and not dm.version_2_with_negative
    assert capsys.readouterr().out.count("SQuAD v1.1 scoring (without the null answer): every question of ") == 1
    # an empty answer list marks an unanswerable question too, without `is_impossible`
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []
    del data["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"]
    (tmp_path / "one_empty.json").write_text(json.dumps(data))
    assert squad_dm(tmp_path / "one_empty.json").task_name == "squad_v2"
    assert "SQuAD v2.0 scoring (with the null answer): 1 of the 4 questions of" in capsys.readouterr().out
    # the option decides when given
    assert squad_dm(tmp_path / "one_empty.json", version_2_with_negative=False).task_name == "squad"
    assert squad_dm(answerable, version_2_with_negative=True).task_name == "squad_v2"
    assert "data.init_args.version_2_with_negative=True" in capsys.readouterr().out


def test_bad_squad_files(squad_dm, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n{"title": "x",\n')
    with pytest.raises(DataFormatError, match=r"bad.json, line 3: not valid JSON"):
        squad_dm(bad)
    data = fixtures.squad_json()
    del data["data"][1]["paragraphs"][0]["qas"][0]["question"]
    bad.write_text(json.dumps(data))
    dm = squad_dm(bad)
    with pytest.raises(DataFormatError, match=r"bad.json: data\[1\].paragraphs\[0\].qas\[0\] is malformed"):
        dm.setup("validate")
    with pytest.raises(ValueError, match="doc_stride"):
        squad_dm(bad, max_seq_length=64, doc_stride=40)
