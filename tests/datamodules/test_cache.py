"""The tokenized-dataset cache: reused on a re-run, rebuilt when a setting, the data or the tokenizer changes."""
import shutil

from datamodules.glue import GLUEDataModule


def _entries(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


def _count_builds(monkeypatch):
    calls = []
    original = GLUEDataModule._read_file_columns

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GLUEDataModule, "_read_file_columns", counting)
    return calls


def test_reuse_and_rebuild_on_changed_setting(glue_dm, tmp_path, monkeypatch):
    calls = _count_builds(monkeypatch)
    glue_dm("mrpc").setup("fit")
    assert len(calls) == 2 and len(_entries(tmp_path / "cache")) == 2
    dm = glue_dm("mrpc")
    dm.setup("fit")  # same settings: read from the cache, nothing rebuilt
    assert len(calls) == 2 and len(dm.train_dataset) == 24
    glue_dm("mrpc", max_seq_length=16).setup("fit")  # a changed setting: new entries
    assert len(calls) == 4 and len(_entries(tmp_path / "cache")) == 4
    glue_dm("mrpc", max_train_samples=3).setup("fit")  # only the train split changes
    assert len(calls) == 5


def test_keyed_by_tokenizer_content_not_path(glue_dm, tmp_path, wordpiece_tokenizer_dir, bpe_tokenizer_dir,
                                             monkeypatch):
    calls = _count_builds(monkeypatch)
    tok = tmp_path / "tok"
    shutil.copytree(wordpiece_tokenizer_dir, tok)
    glue_dm("wnli", tokenizer=str(tok)).setup("validate")
    glue_dm("wnli", tokenizer=str(wordpiece_tokenizer_dir)).setup("validate")  # same content elsewhere: reused
    assert len(calls) == 1
    shutil.rmtree(tok)
    shutil.copytree(bpe_tokenizer_dir, tok)  # same path, other tokenizer: rebuilt
    dm = glue_dm("wnli", tokenizer=str(tok))
    dm.setup("validate")
    assert len(calls) == 2 and dm.eval_datasets[0][0]["input_ids"][0] == dm.tokenizer.cls_token_id == 0


def test_keyed_by_data_content(glue_dm, data_dir, tmp_path, monkeypatch):
    calls = _count_builds(monkeypatch)
    root = tmp_path / "data"
    shutil.copytree(data_dir / "glue" / "WNLI", root / "glue" / "WNLI")
    glue_dm("wnli", data_dir=str(root)).setup("validate")
    f = root / "glue" / "WNLI" / "dev.tsv"
    f.write_text(f.read_text() + "12\tthe game .\tthe film .\t0\n")
    dm = glue_dm("wnli", data_dir=str(root))
    dm.setup("validate")
    assert len(calls) == 2 and len(dm.eval_datasets[0]) == 13
