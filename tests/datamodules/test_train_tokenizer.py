"""scripts/train_tokenizer.py: a RoBERTa-style byte-level BPE from files relative to DATA_DIR."""
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import train_tokenizer  # noqa: E402


def test_train_tokenizer_from_data_dir_files(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    out = tmp_path / "tok"
    train_tokenizer.main(["--files", "wikitext-2/train.txt", "squad/dev-v1.1.json", "--vocab_size", "420",
                          "--min_frequency", "1", "--out", str(out)])
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 420 and tok.is_fast
    assert [tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id, tok.mask_token_id] == [0, 1, 2, 3, 4]
    ids = tok("the game", "the river")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 3  # <s> A </s></s> B </s>
    assert "zorblax" in tok.decode(tok("Zorblax River")["input_ids"]).lower()  # SQuAD contexts were in the corpus
    assert not any(p.name.startswith(".tok.") for p in tmp_path.iterdir())  # no temporary folder left
    (tmp_path / "plain").mkdir()  # the folder gets the permissions of any new folder (mkdtemp would make it 0700)
    assert out.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_train_tokenizer_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit, match="training file 'nope.txt' not found"):
        train_tokenizer.main(["--files", "nope.txt", "--out", str(tmp_path / "t"), "--data_dir", str(tmp_path)])
    assert not (tmp_path / "t").exists()
