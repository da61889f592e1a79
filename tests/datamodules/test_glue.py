"""GLUEDataModule on the fixture data: every task, its quirks, the TaskSpec table, custom files, predict, hub."""
import json

import pytest
import torch

from datamodules.glue import GLUE_TASKS, GLUEDataModule, normalize_task_name

# task -> (label names, expected label of row i in the fixture: fixtures.write_glue)
EXPECTED = {
    "cola": (["0", "1"], lambda i: i % 2),
    "sst2": (["0", "1"], lambda i: i % 2),
    "mrpc": (["0", "1"], lambda i: i % 2),
    "qqp": (["0", "1"], lambda i: i % 2),
    "qnli": (["entailment", "not_entailment"], lambda i: 0 if i % 2 else 1),
    "rte": (["entailment", "not_entailment"], lambda i: 0 if i % 2 else 1),
    "wnli": (["0", "1"], lambda i: i % 2),
    "mnli": (["contradiction", "entailment", "neutral"], lambda i: i % 3),
}


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_glue_task_loads_with_counts_and_labels(glue_dm, task):
    dm = glue_dm(task)
    dm.setup("fit")
    assert len(dm.train_dataset) == 24  # CoLA has no header: no row lost, none taken as a header
    expected_val = 2 if task == "mnli" else 1
    assert len(dm.eval_datasets) == expected_val and all(len(d) == 12 for d in dm.eval_datasets)
    assert dm.task_name == task and dm.num_labels == GLUE_TASKS[task].num_labels
    labels = dm.train_dataset["labels"]
    if task == "stsb":
        assert dm.is_regression and dm.label_names is None and dm.num_labels == 1
        assert labels[:4] == pytest.approx([0.0, 0.37, 0.74, 1.11])
    else:
        names, label_of = EXPECTED[task]
        assert dm.label_names == names and not dm.is_regression
        assert list(labels) == [label_of(i) for i in range(24)]
    loaders = dm.val_dataloader()
    if task == "mnli":
        assert isinstance(loaders, list) and len(loaders) == 2 and dm.val_split_names == ["matched", "mismatched"]
    else:
        assert dm.val_split_names == ["dev"]
        loaders = [loaders]
    batch = next(iter(loaders[0]))
    assert {"input_ids", "attention_mask", "labels", "example_index"} <= set(batch)
    assert batch["labels"].dtype == (torch.float32 if task == "stsb" else torch.int64)
    assert batch["example_index"].tolist() == [0, 1, 2, 3]


def test_quirks_bom_and_unbalanced_quotes_are_kept(glue_dm):
    for task, index in (("mrpc", 0), ("stsb", 1), ("qnli", 2), ("rte", 2), ("wnli", 3)):
        dm = glue_dm(task)
        dm.setup("fit")
        tokens = dm.tokenizer.convert_ids_to_tokens(dm.train_dataset[index]["input_ids"])
        assert '"' in tokens, task  # the stray quote is text, not CSV quoting
        # the row after it is its own example (a quoting reader would have merged lines)
        assert len(dm.train_dataset) == 24


def test_task_names_any_style_and_spec_table():
    assert normalize_task_name("SST-2") == normalize_task_name("sst2") == normalize_task_name("Sst_2") == "sst2"
    assert normalize_task_name("STS-B") == "stsb" and normalize_task_name("CoLA") == "cola"
    with pytest.raises(ValueError, match="unknown task_name 'sst5'"):
        normalize_task_name("sst5")
    assert GLUE_TASKS["cola"].metrics == ("matthews",) and GLUE_TASKS["cola"].main_metric == "matthews"
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].metrics == ("pearson", "spearman")
    assert GLUE_TASKS["mrpc"].metrics == ("f1", "accuracy") and GLUE_TASKS["qqp"].main_metric == "f1"
    assert len(GLUE_TASKS["mnli"].dev_files) == 2


def test_hyperparameters_and_data_facts(glue_dm, wordpiece_tokenizer_dir):
    dm = glue_dm("SST-2")
    assert dm.hparams["tokenizer"] == str(wordpiece_tokenizer_dir) and dm.hparams["task_name"] == "SST-2"
    assert dm.vocab_size == len(dm.tokenizer) and dm.pad_token_id == dm.tokenizer.pad_token_id == 0


def test_max_samples_take_the_first_rows(glue_dm):
    dm = glue_dm("rte", max_train_samples=5, max_eval_samples=3)
    dm.setup("fit")
    assert len(dm.train_dataset) == 5 and len(dm.eval_datasets[0]) == 3
    assert list(dm.train_dataset["example_index"]) == [0, 1, 2, 3, 4]


def test_group_by_length_batches_similar_lengths(glue_dm):
    dm = glue_dm("sst2", group_by_length=True, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen = sorted(i for b in loader for i in b["example_index"].tolist())
    assert seen == list(range(24))


def test_pad_to_multiple_of_8(glue_dm):
    dm = glue_dm("mrpc", pad_to_multiple_of=8)
    dm.setup("validate")
    assert all(b["input_ids"].shape[1] % 8 == 0 for b in dm.val_dataloader())


def test_predict_on_test_tsv_without_labels(glue_dm, data_dir, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_dir / "glue" / "CoLA", root / "glue" / "CoLA")
    (root / "glue" / "CoLA" / "test.tsv").write_text("index\tsentence\n0\tthe game was good .\n1\tthe film .\n")
    dm = glue_dm("cola", data_dir=str(root), predict_split="test")
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert "labels" not in batch and batch["example_index"].tolist() == [0, 1]
    assert dm.predict_split_names == ["test"]


def test_custom_csv_with_header_pair_and_inferred_labels(glue_dm, tmp_path):
    f = tmp_path / "train.csv"
    f.write_text('text,other,label\n"hello, world",the film,pos\nthe game,"a ""quoted"" city",neg\n'
                 "the river,the king,pos\n")
    dm = glue_dm("custom", train_file=str(f), validation_file=str(f), text_columns=["text", "other"],
                 label_column="label")
    assert dm.label_names == ["neg", "pos"] and dm.num_labels == 2 and dm.task_name == "custom"
    dm.setup("fit")
    assert list(dm.train_dataset["labels"]) == [1, 0, 1]
    assert "," in dm.tokenizer.decode(dm.train_dataset[0]["input_ids"])  # comma inside a quoted field kept


def test_custom_tsv_without_header_uses_indices(glue_dm, tmp_path):
    f = tmp_path / "data.tsv"
    f.write_text('2\tthe " game\n10\tthe film\n2\tthe city\n')
    dm = glue_dm("custom", train_file=str(f), validation_file=str(f), text_columns=[1], label_column=0, header=False)
    assert dm.label_names == ["2", "10"]  # integer labels sorted numerically
    dm.setup("fit")
    assert list(dm.train_dataset["labels"]) == [0, 1, 0]


def test_custom_jsonl_regression_and_given_labels(glue_dm, tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join(json.dumps({"s": f"the game {i}", "y": i / 2}) for i in range(5)) + "\n")
    dm = glue_dm("custom", train_file=str(f), validation_file=str(f), text_columns=["s"], label_column="y",
                 is_regression=True)
    dm.setup("fit")
    assert dm.num_labels == 1 and dm.is_regression and list(dm.train_dataset["labels"]) == [0, .5, 1, 1.5, 2]
    g = tmp_path / "cls.jsonl"
    g.write_text('{"s": "the film", "y": "b"}\n{"s": "the game", "y": "a"}\n', encoding="latin-1")
    dm = glue_dm("custom", validation_file=str(g), text_columns=["s"], label_column="y", label_names=["b", "a"],
                 encoding="latin-1")
    dm.setup("validate")
    assert list(dm.eval_datasets[0]["labels"]) == [0, 1]


def test_hub_name_offline_gives_a_clear_error(glue_dm):
    dm = glue_dm("sst2", hub_name="nyu-mll/glue")
    with pytest.raises(ConnectionError, match="needs the network"):
        dm.setup("fit")


def test_fit_on_a_tiny_model_one_batch(glue_dm, tiny_bert_dir):
    """The batches feed a Hugging Face classifier directly (labels, mask, token types)."""
    from transformers import AutoModelForSequenceClassification

    dm = glue_dm("mnli", tokenizer=str(tiny_bert_dir))
    dm.setup("fit")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=dm.num_labels)
    batch = next(iter(dm.train_dataloader()))
    out = model(**{k: v for k, v in batch.items() if k != "example_index"})
    assert out.logits.shape == (4, 3) and torch.isfinite(out.loss)
