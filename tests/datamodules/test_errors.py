"""Bad input gives one clear DataFormatError (or FileNotFoundError/ValueError) naming the file, line and expectation,
and leaves no half-written cache entry."""
import shutil

import pytest

from datamodules.files import DataFormatError


@pytest.fixture
def glue_copy(data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir / "glue" / "RTE", root / "glue" / "RTE")
    return root


def _cache_entries(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def _expect(dm, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        dm.setup("fit")
    assert _cache_entries(tmp_path / "cache") == []  # nothing cached, no temporary folder left


def test_missing_file(glue_dm, tmp_path):
    _expect(glue_dm("rte", data_dir=str(tmp_path / "nowhere")), FileNotFoundError,
            r"data file not found: .*nowhere/glue/RTE/train.tsv", tmp_path)


def test_unknown_task(glue_dm):
    with pytest.raises(ValueError, match=r"unknown task_name 'glue9'.*'cola'"):
        glue_dm("glue9")


def test_wrong_column_count_names_file_and_line(glue_dm, glue_copy, tmp_path):
    f = glue_copy / "glue" / "RTE" / "train.tsv"
    lines = f.read_text().splitlines()
    lines[5] = lines[5] + "\textra"
    f.write_text("\n".join(lines) + "\n")
    _expect(glue_dm("rte", data_dir=str(glue_copy)), DataFormatError,
            r"RTE/train.tsv, line 6: expected 4 tab-separated columns \(as in the header\), found 5", tmp_path)


def test_label_outside_the_label_list(glue_dm, glue_copy, tmp_path):
    f = glue_copy / "glue" / "RTE" / "train.tsv"
    f.write_text(f.read_text().replace("\tnot_entailment\n", "\tcontradiction\n", 1))
    _expect(glue_dm("rte", data_dir=str(glue_copy)), DataFormatError,
            r"RTE/train.tsv, line 2: label 'contradiction' in column 'label'; expected one of "
            r"\['entailment', 'not_entailment'\]", tmp_path)


def test_missing_column(glue_dm, glue_copy, tmp_path):
    f = glue_copy / "glue" / "RTE" / "train.tsv"
    f.write_text(f.read_text().replace("sentence2", "hypothesis", 1))
    _expect(glue_dm("rte", data_dir=str(glue_copy)), DataFormatError,
            r"RTE/train.tsv, line 1: missing column 'sentence2'; the header has", tmp_path)


def test_undecodable_bytes_name_the_line(glue_dm, glue_copy, tmp_path):
    f = glue_copy / "glue" / "RTE" / "train.tsv"
    lines = f.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b" .", b" \xe9 .", 1)
    f.write_bytes(b"\n".join(lines))
    _expect(glue_dm("rte", data_dir=str(glue_copy)), DataFormatError,
            r"RTE/train.tsv, line 4: bytes b'\\xe9' cannot be decoded as utf-8", tmp_path)


def test_custom_file_errors(glue_dm, tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"s": "a", "y": "1"}\n{"s": "b"}\n')
    with pytest.raises(DataFormatError, match=r"x.jsonl, line 2: missing key 'y'"):
        glue_dm("custom", train_file=str(f), text_columns=["s"], label_column="y")
    f.write_text('{"s": "a", "y": "1"}\nnot json\n')
    with pytest.raises(DataFormatError, match=r"x.jsonl, line 2: not a JSON object"):
        glue_dm("custom", train_file=str(f), text_columns=["s"], label_column="y")
    g = tmp_path / "x.tsv"
    g.write_text("a\t1\nb\t0\n")
    with pytest.raises(DataFormatError, match=r"column 'text' given by name but the file is read without a header"):
        glue_dm("custom", train_file=str(g), text_columns=["text"], label_column=1, header=False)
    with pytest.raises(ValueError, match="needs text_columns"):
        glue_dm("custom", train_file=str(g), label_column=1)
    with pytest.raises(DataFormatError, match="cannot tell the format from the extension '.xml'"):
        (tmp_path / "x.xml").write_text("<a/>")
        glue_dm("custom", train_file=str(tmp_path / "x.xml"), text_columns=["s"], label_column="y")
