"""Your own files (`task_name: custom`) as a researcher brings them: coded labels with display names, unlabelled files
to predict on (headerless too), JSON lines with Unicode line separators inside strings, and the hub path of GLUE
read from a local dataset folder."""
import json

import pytest

from datamodules.files import DataFormatError, iter_json_records, read_table
from lightning_modules.finetune import glue_task_metrics

TOPICS = ["World", "Sports", "Business", "Sci/Tech"]


def coded_csv(path, n=8, codes=(1, 2, 3, 4)):
    rows = [f"the {word} game,{codes[i % len(codes)]}" for i, word in enumerate(["film", "city", "river", "king"] * n)]
    path.write_text("text,label\n" + "\n".join(rows[:n]) + "\n")
    return path


def test_label_names_name_coded_labels(glue_dm, tmp_path):
    f = coded_csv(tmp_path / "news.csv")
    dm = glue_dm("custom", train_file=str(f), validation_file=str(f), text_columns=["text"], label_column="label",
                 label_names=TOPICS)
    # ids follow the sorted raw values; the display names are what the model's id2label will say
    assert dm.label_names == ["1", "2", "3", "4"] and dm.label_display_names == TOPICS and dm.num_labels == 4
    dm.setup("fit")
    assert list(dm.train_dataset["labels"]) == [0, 1, 2, 3, 0, 1, 2, 3]
    # names that ARE the labels keep their old meaning: the id order
    dm = glue_dm("custom", train_file=str(f), text_columns=["text"], label_column="label",
                 label_names=["4", "3", "2", "1"])
    assert dm.label_names == ["4", "3", "2", "1"] and dm.label_display_names == dm.label_names
    with pytest.raises(ValueError, match=r"label_names \['a', 'b'\]: .*news.csv has the labels \['1', '2', '3', "
                                         r"'4'\]; give those labels .* or 4 display names for them in this order, "
                                         r"or label_map"):
        glue_dm("custom", train_file=str(f), text_columns=["text"], label_column="label", label_names=["a", "b"])
    with pytest.raises(ValueError, match=r"label_names \['1', '2', '3', 'Sci'\]: "):  # part labels, part names
        glue_dm("custom", train_file=str(f), text_columns=["text"], label_column="label",
                label_names=["1", "2", "3", "Sci"])


def test_label_map_names_coded_labels(glue_dm, tmp_path):
    f = coded_csv(tmp_path / "sent.csv", codes=(0, 1, 2))
    label_map = {2: "positive", 0: "negative", 1: "neutral"}  # YAML gives integer keys
    dm = glue_dm("custom", validation_file=str(f), text_columns=["text"], label_column="label", label_map=label_map)
    assert dm.label_names == ["0", "1", "2"] and dm.label_display_names == ["negative", "neutral", "positive"]
    dm.setup("validate")
    assert list(dm.eval_datasets[0]["labels"]) == [0, 1, 2, 0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="give label_names or label_map, not both"):
        glue_dm("custom", validation_file=str(f), text_columns=["text"], label_column="label", label_map=label_map,
                label_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="repeat a name"):
        glue_dm("custom", validation_file=str(f), text_columns=["text"], label_column="label",
                label_map={0: "bad", 1: "bad", 2: "good"})
    with pytest.raises(ValueError, match="label_names/label_map are for task_name 'custom'"):
        glue_dm("sst2", label_names=["negative", "positive"])


def test_binary_own_task_scores_f1_too(glue_dm, tmp_path):
    f = coded_csv(tmp_path / "bin.csv", codes=(0, 1))
    dm = glue_dm("custom", train_file=str(f), text_columns=["text"], label_column="label")
    assert dm.spec.metrics == ("accuracy", "f1")
    assert glue_task_metrics("custom", False, 2) == (["accuracy", "f1"], ["dev"])  # the module reads the same rule
    assert glue_task_metrics("custom", False, 4) == (["accuracy"], ["dev"])
    assert glue_task_metrics("custom", True, 1) == (["pearson", "spearman"], ["dev"])


@pytest.mark.parametrize("suffix,sep", [(".tsv", "\t"), (".csv", ",")])
def test_predict_on_headerless_files_without_labels(glue_dm, tmp_path, suffix, sep):
    # the labelled layout: label first, then the text (as many headerless exports are)
    train = tmp_path / f"train{suffix}"
    train.write_text("".join(f"{i % 2}{sep}the film {word}\n" for i, word in enumerate(["good", "bad"] * 3)))
    kwargs = dict(train_file=str(train), text_columns=[1], label_column=0, header=False, predict_split="test")
    texts = ["the river was good", "the king was bad", "the city"]
    for layout in ("without the column", "with it empty"):
        test = tmp_path / f"test{suffix}"
        test.write_text("".join(("" if layout == "without the column" else sep) + t + "\n" for t in texts))
        dm = glue_dm("custom", test_file=str(test), **kwargs)
        dm.setup("predict")
        data = dm.predict_datasets[0]
        assert "labels" not in data.column_names and len(data) == 3, layout
        assert dm.tokenizer.decode(data[0]["input_ids"], skip_special_tokens=True) == texts[0]
    test.write_text("".join(f"x{sep}y{sep}{t}\n" for t in texts))
    with pytest.raises(DataFormatError, match=r"line 1: expected 2 columns \(the labelled layout\) or 1 \(without the "
                                              r"label column 0\), found 3"):
        glue_dm("custom", test_file=str(test), **kwargs).setup("predict")


def test_headerless_test_file_keeps_later_text_columns(glue_dm, tmp_path):
    train = tmp_path / "pairs.tsv"  # text, label, text
    train.write_text("the film\t1\tthe game\nthe city\t0\tthe king\n")
    test = tmp_path / "pairs-test.tsv"  # the same without the label column: the second text moves left
    test.write_text("the river\tthe army\n")
    dm = glue_dm("custom", train_file=str(train), test_file=str(test), text_columns=[0, 2], label_column=1,
                 header=False, predict_split="test")
    dm.setup("predict")
    assert dm.tokenizer.decode(dm.predict_datasets[0][0]["input_ids"]) == "[CLS] the river [SEP] the army [SEP]"


def test_json_lines_split_on_newlines_only(glue_dm, tmp_path):
    """U+2028, U+2029 and U+0085 are valid inside a JSON string (str.splitlines would break the line there)."""
    f = tmp_path / "lines.jsonl"
    records = [{"text": "the film\u2028was good", "label": "1"}, {"text": "the game\x85was bad\u2029", "label": "0"}]
    f.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode("utf-8") + b"\n")
    assert [(n, r["text"]) for n, r in iter_json_records(f)] == [(1, records[0]["text"]), (2, records[1]["text"])]
    assert read_table(f).line_numbers == [1, 2]
    dm = glue_dm("custom", train_file=str(f), validation_file=str(f), text_columns=["text"], label_column="label")
    dm.setup("fit")
    assert list(dm.train_dataset["labels"]) == [1, 0]


def test_glue_hub_path_reads_a_local_dataset_folder(glue_dm, tmp_path):
    """`hub_name` goes through `datasets.load_dataset(hub_name, task, split=...)`: a local folder with a `sst2`
    config stands in for nyu-mll/glue here (no network), as the main job's hub fallback uses it."""
    hub = tmp_path / "glue-hub"
    hub.mkdir()
    (hub / "README.md").write_text(
        "---\nconfigs:\n- config_name: sst2\n  data_files:\n  - split: train\n    path: sst2/train.jsonl\n"
        "  - split: validation\n    path: sst2/validation.jsonl\n---\n")
    (hub / "sst2").mkdir()
    for split, n in (("train", 6), ("validation", 4)):
        rows = [{"sentence": f"the film was {'good' if i % 2 else 'bad'} ", "label": i % 2, "idx": i} for i in range(n)]
        (hub / "sst2" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = glue_dm("sst2", hub_name=str(hub))
    assert dm.label_display_names == ["negative", "positive"]
    dm.setup("fit")
    assert len(dm.train_dataset) == 6 and list(dm.eval_datasets[0]["labels"]) == [0, 1, 0, 1]
