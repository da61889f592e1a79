"""models/model_card.py: front matter the hub reads (huggingface_hub.ModelCard): language, base model, real metrics."""
from huggingface_hub import ModelCard
from transformers import BertConfig, BertForSequenceClassification

from models.model_card import render_model_card

TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def card_for(info: dict, metrics: dict | None = None):
    return ModelCard(render_model_card(BertForSequenceClassification(BertConfig(**TINY)), info, metrics=metrics)).data


def test_front_matter_names_language_base_model_and_the_hub_dataset_config():
    data = card_for({"task": "sst2", "teacher": "packaged:all-minilm-l6-v2",
                     "metrics": {"val/accuracy": 91.0, "val/score": 91.0, "val/examples": 872.0}})
    assert data.language == "en"
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert [(r.dataset_type, r.dataset_config, r.metric_name) for r in data.eval_results] == [
        ("nyu-mll/glue", "sst2", "val/accuracy")]  # no score copy, no example count
    assert data.metrics == ["accuracy"]


def test_no_local_path_as_base_model_and_no_learning_rate_as_metric(tmp_path):
    data = card_for({"task": "squad", "recipe": {"base_model": str(tmp_path)}},
                    metrics={"val/f1": 80.0, "lr-AdamW/pg1": 1e-5})
    assert data.base_model is None
    assert [(r.dataset_type, r.metric_name) for r in data.eval_results] == [("rajpurkar/squad", "val/f1")]
