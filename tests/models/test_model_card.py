"""models/model_card.py: cards the hub reads (huggingface_hub.ModelCard): language, base model, hub dataset ids, named
splits, no local paths, each hyper-parameter once."""
from pathlib import Path

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


def render(info: dict, **kwargs) -> ModelCard:
    return ModelCard(render_model_card(BertForSequenceClassification(BertConfig(**TINY)), info, **kwargs))


def test_front_matter_datasets_are_hub_ids_and_the_index_keeps_the_config():
    # the modules' hub ids, and the older names a checkpoint may still carry, all become hub ids
    for info, hub_id, config in [({"task": "sst2", "datasets": ["glue/sst2"]}, "nyu-mll/glue", "sst2"),
                                 ({"task": "sst2", "datasets": ["nyu-mll/glue"]}, "nyu-mll/glue", "sst2"),
                                 ({"task": "squad", "datasets": ["squad"]}, "rajpurkar/squad", None),
                                 ({"task": "squad_v2"}, "rajpurkar/squad_v2", None),
                                 ({"task": "mlm", "datasets": ["wikitext-2"]}, "Salesforce/wikitext", "wikitext-2-v1")]:
        data = render({**info, "metrics": {"val/f1": 50.0}}).data
        assert data.datasets == [hub_id]
        assert [(r.dataset_type, r.dataset_config) for r in data.eval_results] == [(hub_id, config)]


def test_a_subset_of_the_dev_set_is_not_called_the_validation_split():
    squad = {"task": "squad", "metrics": {"val/f1": 50.0}}
    split = render(squad, data_hyper_parameters={"eval_file": "squad/dev-v1.1.json", "eval_articles": [38, 48]}
                   ).data.eval_results[0].dataset_split
    assert split == "validation[articles 38-47]"
    split = render(squad, data_hyper_parameters={"eval_file": "squad/dev-v1.1.json", "eval_articles": None,
                                                 "max_eval_samples": 100}).data.eval_results[0].dataset_split
    assert split == "validation[first 100 examples]"
    split = render(squad, data_hyper_parameters={"eval_file": "/x/mine.json"}).data.eval_results[0].dataset_split
    assert split == "custom (mine.json)"
    mnli = render({"task": "mnli", "metrics": {"val/matched/accuracy": 80.0, "val/mismatched/accuracy": 81.0}})
    assert [r.dataset_split for r in mnli.data.eval_results] == ["validation_matched", "validation_mismatched"]
    assert render({"task": "sst2", "metrics": {"val/accuracy": 1.0}}).data.eval_results[0].dataset_split == "validation"


def test_no_absolute_path_of_the_training_machine_in_the_card(tmp_path, monkeypatch):
    data_dir, repo = tmp_path / "data", Path(__file__).resolve().parents[2]
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    card = render({"task": "squad", "teacher": str(tmp_path / "runs" / "teacher")},
                  hyper_parameters={"pretrained": str(repo / "artifacts" / "best")},
                  data_hyper_parameters={"data_dir": str(data_dir), "eval_file": str(data_dir / "squad/dev.json")},
                  command=["python", str(repo / "train.py"), "fit", f"--data.init_args.data_dir={data_dir}",
                           "--config", str(repo / "configs/finetune/squad.yaml")])
    text = str(card)
    assert str(tmp_path) not in text and str(repo) not in text
    assert "| pretrained | artifacts/best |" in text and "| eval_file | $DATA_DIR/squad/dev.json |" in text
    assert "python train.py fit '--data.init_args.data_dir=$DATA_DIR' --config configs/finetune/squad.yaml" in text
    assert "Teacher: `teacher`" in text


def test_each_hyper_parameter_once():
    card = render({"task": "sst2", "recipe": {"lr": 2e-5, "warmup_ratio": 0.1}, "data": {"max_seq_length": 128},
                   "metrics": {"val/accuracy": 90.0}},
                  hyper_parameters={"lr": 2e-5, "warmup_ratio": 0.1, "weight_decay": 0.01},
                  data_hyper_parameters={"max_seq_length": 128, "batch_size": 32},
                  metrics={"val/accuracy": 90.0, "val/loss": 0.3})
    rows = [line.split("|")[1].strip() for line in card.text.splitlines() if line.startswith("| ")]
    for name in ("lr", "warmup_ratio", "weight_decay", "max_seq_length", "batch_size", "val/accuracy", "val/loss"):
        assert rows.count(name) == 1, name
