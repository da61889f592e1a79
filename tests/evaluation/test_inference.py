"""Raw-text inference (evaluation/inference.py) on tiny random-init exports: the same numbers as the model itself,
the same QA windows and answers as evaluation, the settings a model card records, and bad input named."""
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import (AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel,
                          DistilBertConfig, DistilBertForSequenceClassification)

from evaluation.inference import Predictor, recorded_settings, table_rows
from models.model_card import read_model_card, render_model_card
from tests import fixtures
from tests.conftest import TINY
from tests.evaluation.conftest import bert_config, save


def direct_logits(directory, *texts, max_length=24):
    """The export's logits computed plainly, one input at a time (no batching, no padding)."""
    tok = AutoTokenizer.from_pretrained(directory)
    model = Predictor(directory, device="cpu").model
    with torch.no_grad():
        return model(**tok(*texts, truncation=True, max_length=max_length, return_tensors="pt")).logits[0]


def test_classify_single_texts_and_pairs_by_label_name(classifier_dir):
    predictor = Predictor(classifier_dir, device="cpu")
    assert predictor.kind == "classification" and predictor.task == "sst2"
    assert predictor.settings["max_seq_length"] == 24  # from the card's data table
    texts = ["a gripping , funny film", "bad", "the film was good and the story was moving ." * 4]
    records = predictor.classify(texts, batch_size=2)  # batches of unequal lengths, padded
    for text, record in zip(texts, records):
        expected = direct_logits(classifier_dir, text).softmax(-1)
        assert record["text"] == text and set(record["scores"]) == {"negative", "positive"}
        torch.testing.assert_close(torch.tensor([record["scores"]["negative"], record["scores"]["positive"]]),
                                   expected, atol=1e-5, rtol=0)
        assert record["label"] == ("negative", "positive")[int(expected.argmax())]
        assert record["score"] == max(record["scores"].values())
    pairs = predictor.classify(["the film", "a song"], ["was good", "was bad"])
    expected = direct_logits(classifier_dir, "the film", "was good").softmax(-1)
    assert pairs[0]["text_pair"] == "was good"
    assert pairs[0]["scores"]["positive"] == pytest.approx(float(expected[1]), abs=1e-5)
    assert table_rows("classification", pairs[0])[0].keys() == {
        "text", "text_pair", "label", "score", "score_negative", "score_positive"}


def test_regression_and_distilbert_pairs(tmp_path, wordpiece_tokenizer_dir):
    torch.manual_seed(0)
    regression = save(BertForSequenceClassification(bert_config(wordpiece_tokenizer_dir, num_labels=1)),
                      wordpiece_tokenizer_dir, tmp_path / "stsb")
    record = Predictor(regression, device="cpu").classify(["a film"], ["a song"])[0]
    assert set(record) == {"text", "text_pair", "value"}
    assert record["value"] == pytest.approx(float(direct_logits(regression, "a film", "a song", max_length=130)[0]),
                                            abs=1e-5)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = DistilBertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, dim=32, n_layers=2, n_heads=4,
                              hidden_dim=64, max_position_embeddings=130, num_labels=3)
    distil = save(DistilBertForSequenceClassification(config), wordpiece_tokenizer_dir, tmp_path / "distil")
    records = Predictor(distil, device="cpu").classify(["a film", "a song"], ["was good", "was bad"])
    assert [sorted(r["scores"]) for r in records] == [["LABEL_0", "LABEL_1", "LABEL_2"]] * 2  # no token_type_ids


def test_qa_long_context_windows_and_answers_as_evaluation(tmp_path, qa_dir, wordpiece_tokenizer_dir):
    """A context several windows long: the predictor's windows are the SQuAD DataModule's, its answers those of
    evaluation's post-processing on the DataModule's windows, and the offsets point into the context."""
    from datamodules.squad import SQuADDataModule
    from evaluation.squad import postprocess_qa_predictions

    squad = fixtures.write_squad(tmp_path / "squad.json", n_articles=1, n_paragraphs=2, long_context=True,
                                 with_impossible=True)
    dm = SQuADDataModule(str(qa_dir), train_file=None, eval_file=str(squad), eval_articles=None, max_seq_length=48,
                         doc_stride=12, data_dir=str(tmp_path), eval_batch_size=3, group_by_length=False)
    dm.setup("validate")
    examples = {k: list(dm.eval_examples[k]) for k in ("id", "question", "context")}
    features = dm.eval_features
    assert len(features) > 2 * len(examples)  # every context is several windows long

    for version_2 in (False, True):
        predictor = Predictor(qa_dir, device="cpu", max_seq_length=48, doc_stride=12, n_best_size=5,
                              max_answer_length=8, version_2=version_2)
        records = predictor.answer(examples["question"], examples["context"], batch_size=3)
        model = predictor.model
        with torch.no_grad():  # evaluation's way: the DataModule's windows, one by one
            outputs = [model(**{k: torch.tensor([features[f][k]]) for k in ("input_ids", "attention_mask",
                                                                             "token_type_ids")})
                       for f in range(len(features))]
        expected, null_odds = postprocess_qa_predictions(
            examples["context"], examples["id"], features["example_index"], features["offset_mapping"],
            [o.start_logits[0] for o in outputs], [o.end_logits[0] for o in outputs], n_best_size=5,
            max_answer_length=8, version_2=version_2)
        for qid, context, record in zip(examples["id"], examples["context"], records):
            assert record["answer"] == expected[qid]
            if record["start"] is not None:
                assert context[record["start"]:record["end"]] == record["answer"] != ""
                assert isinstance(record["score"], float)
            if version_2:
                assert record["null_odds"] == pytest.approx(null_odds[qid], abs=1e-4)
            else:
                assert "null_odds" not in record and record["start"] is not None

    # v2.0's null answer: no text, no offsets, the odds reported
    never = Predictor(qa_dir, device="cpu", version_2=True, null_score_diff_threshold=-1e9)
    record = never.answer(["which river ?"], [examples["context"][0]])[0]
    assert (record["answer"], record["start"], record["end"]) == ("", None, None) and "null_odds" in record


def test_qa_settings_come_from_the_model_card(tmp_path, wordpiece_tokenizer_dir):
    torch.manual_seed(0)
    info = {"task": "squad_v2", "datasets": ["rajpurkar/squad_v2"], "data": {"max_seq_length": 40, "doc_stride": 10},
            "recipe": {"n_best_size": 7, "max_answer_length": 5, "null_score_diff_threshold": 1.5}}
    out = save(BertForQuestionAnswering(bert_config(wordpiece_tokenizer_dir)), wordpiece_tokenizer_dir,
               tmp_path / "qa", info)
    front_matter, values = read_model_card(out)
    assert front_matter["datasets"] == ["rajpurkar/squad_v2"] and values["doc_stride"] == 10
    predictor = Predictor(out, device="cpu")
    assert predictor.settings == {"max_seq_length": 40, "doc_stride": 10, "n_best_size": 7, "max_answer_length": 5,
                                  "null_score_diff_threshold": 1.5, "version_2": True}
    assert Predictor(out, device="cpu", version_2=False, doc_stride=4).settings["doc_stride"] == 4


def test_qa_defaults_without_a_card(qa_dir):
    settings = Predictor(qa_dir, device="cpu").settings
    assert settings == {"max_seq_length": 130, "doc_stride": 43, "n_best_size": 20, "max_answer_length": 30,
                        "null_score_diff_threshold": 0.0, "version_2": False}  # 384 capped by the positions


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_roberta_dir"])
def test_fill_mask_top_k_per_mask(request, fixture):
    directory = request.getfixturevalue(fixture)
    predictor = Predictor(directory, device="cpu")
    mask = predictor.tokenizer.mask_token
    records = predictor.fill_mask([f"the film was {mask} .", f"a {mask} and {mask} day"], top_k=3)
    assert [len(r["masks"]) for r in records] == [1, 2]
    assert all(len(candidates) == 3 for r in records for candidates in r["masks"])
    tok, model = predictor.tokenizer, predictor.model
    with torch.no_grad():
        enc = tok(f"the film was {mask} .", return_tensors="pt")
        logits = model(**enc).logits[0, enc["input_ids"][0].tolist().index(tok.mask_token_id)]
    top = logits.softmax(-1).topk(3)
    assert [c["score"] for c in records[0]["masks"][0]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [c["token"] for c in records[0]["masks"][0]] == [tok.decode([i]) for i in top.indices.tolist()]
    assert len(table_rows("fill-mask", records[1])) == 6  # one row per mask and rank


def test_bad_input_is_named(tmp_path, classifier_dir, qa_dir, tiny_bert_dir, wordpiece_tokenizer_dir):
    cls = Predictor(classifier_dir, device="cpu")
    with pytest.raises(ValueError, match=r"^data.tsv, line 3: empty text$"):
        cls.classify(["good", " "], where=["data.tsv, line 2", "data.tsv, line 3"])
    with pytest.raises(ValueError, match="answer needs a question-answering export, but .* is a classification"):
        cls.answer(["q"], ["c"])
    with pytest.raises(ValueError, match="2 texts but 1 text pairs"):
        cls.classify(["a", "b"], ["c"])
    with pytest.raises(ValueError, match=r"^--text: no \[MASK\] in the text"):
        Predictor(tiny_bert_dir, device="cpu").fill_mask(["no mask"], where=["--text"])
    qa = Predictor(qa_dir, device="cpu", max_seq_length=32, doc_stride=8)
    with pytest.raises(ValueError, match=r"^input 1: the question is 30 tokens long; with max_seq_length=32"):
        qa.answer(["film " * 30], ["the film was good ."])
    with pytest.raises(ValueError, match=r"doc_stride=16 must be in \(0, max_seq_length / 2\)"):
        Predictor(qa_dir, device="cpu", max_seq_length=32, doc_stride=16)
    with pytest.raises(ValueError, match="max_seq_length=600: the model .* takes 1 to 130 tokens"):
        Predictor(classifier_dir, device="cpu", max_seq_length=600)
    with pytest.raises(ValueError, match="device 'gpu' is not a device name"):
        Predictor(classifier_dir, device="gpu")
    with pytest.raises(FileNotFoundError, match="directory not found"):
        Predictor(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Predictor(tmp_path / "empty")
    encoder = save(BertModel(bert_config(wordpiece_tokenizer_dir)), wordpiece_tokenizer_dir, tmp_path / "encoder")
    with pytest.raises(ValueError, match=r"architectures \['BertModel'\]; raw-text inference serves"):
        Predictor(encoder)


def test_the_task_is_read_from_the_model_index_and_from_older_cards(tmp_path):
    model = BertForSequenceClassification(BertConfig(vocab_size=40, **TINY))
    cards = {"index": {"task": "mrpc", "metrics": {"val/f1": 80.0}},  # nyu-mll/glue + mrpc in the model-index
             "squad": {"task": "squad_v2", "metrics": {"val/f1": 50.0}}}
    for name, info in cards.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(render_model_card(model, info))
    assert ModelCard.load(tmp_path / "index" / "README.md").data.datasets == ["nyu-mll/glue"]
    assert recorded_settings(str(tmp_path / "index"))["task"] == "mrpc"
    assert recorded_settings(str(tmp_path / "squad"))["version_2"] is True
    (tmp_path / "old").mkdir()  # a card written before hub ids
    (tmp_path / "old" / "README.md").write_text("---\ndatasets:\n- glue/qnli\n---\n# old\n")
    assert recorded_settings(str(tmp_path / "old"))["task"] == "qnli"
