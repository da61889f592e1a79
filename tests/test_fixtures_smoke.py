"""The fixtures themselves: tokenizers load and cover the text, tiny models run."""
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer


def test_tokenizers_and_models(tiny_bert_dir, tiny_roberta_dir, data_dir):
    for d in (tiny_bert_dir, tiny_roberta_dir):
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForMaskedLM.from_pretrained(d, dtype=torch.float32)
        enc = tok(["the game was released ."], return_tensors="pt")
        assert tok.unk_token_id not in enc["input_ids"][0].tolist()
        out = model(**enc)
        assert out.logits.shape == (1, enc["input_ids"].shape[1], len(tok))
    assert (data_dir / "glue" / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert not (data_dir / "glue" / "CoLA" / "dev.tsv").read_text().endswith("\n")
