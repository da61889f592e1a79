"""Task-specific distillation on SQuAD: zero soft loss for student == teacher, and configs/distill/squad.yaml."""
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

import train
from lightning_modules.distill_tasks import QADistillationModule
from tests.conftest import TINY

CONFIG = "configs/distill/squad.yaml"


@pytest.fixture
def tiny_bert_qa_teacher(tmp_path, wordpiece_tokenizer_dir):
    """A random-init 6-layer BERT QA model saved with its tokenizer, like an exported SQuAD teacher."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    model = BertForQuestionAnswering(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                **{**TINY, "num_hidden_layers": 6}))
    model.config.architectures = ["BertForQuestionAnswering"]
    out = tmp_path / "qa-teacher"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def qa_batch():
    torch.manual_seed(0)
    ids = torch.randint(5, 50, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "start_positions": torch.tensor([2, 0]), "end_positions": torch.tensor([4, 0])}


def test_soft_term_vanishes_for_the_teacher_itself(tiny_bert_qa_teacher):
    same = QADistillationModule(teacher=str(tiny_bert_qa_teacher), student=str(tiny_bert_qa_teacher), alpha_cos=1.0)
    terms = same.distillation_terms(qa_batch())
    assert terms["ce"].item() == pytest.approx(0.0, abs=1e-5) and terms["cos"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["hard"].item() > 0
    student = QADistillationModule(teacher=str(tiny_bert_qa_teacher))
    assert type(student.model).__name__ == "DistilBertForQuestionAnswering" and student.layer_map == [0, 2, 5]
    assert student.distillation_terms(qa_batch())["ce"].item() > 0


def test_squad_config_prints_and_runs_one_batch(tmp_path, data_dir, tiny_bert_qa_teacher, capsys):
    with pytest.raises(SystemExit):
        train.main(args=["fit", "--config", CONFIG, "--print_config"])
    assert "QADistillationModule" in capsys.readouterr().out
    cli = train.main(args=[
        "fit", "--config", CONFIG, f"--model.init_args.teacher={tiny_bert_qa_teacher}",
        f"--data.init_args.tokenizer={tiny_bert_qa_teacher}", f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.train_articles=null", "--data.init_args.eval_articles=null",
        "--data.init_args.max_seq_length=64", "--data.init_args.doc_stride=16", "--data.init_args.batch_size=4",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
    ])
    logged = cli.trainer.logged_metrics
    for key in ("train/loss", "train/loss_ce", "train/loss_hard", "val/f1", "val/exact_match"):
        assert key in logged, key
    assert not cli.model.teacher.training
