"""Cached teacher logits of task distillation (`TaskDistillationMixin`): the same losses and weights as the teacher's
forward at every step, keyed by the training rows whatever the batch order, built only when it pays off."""
import json

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForSequenceClassification

import train
from lightning_modules.distill_tasks import GLUEDistillationModule, TaskDistillationMixin, pack_tokens, unpack_tokens
from models.flops import forward_flops
from tests.conftest import TINY
from tests.lightning_modules.test_distill_glue import glue_args

# fp32 on any machine: the comparisons below are at float rounding, which bf16-mixed (the default where the CPU has
# bf16) is far above
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.precision=32-true"]


def save_teacher(model_class, out, tokenizer_dir, **config):
    """A random 6-layer BERT teacher with large initial weights (initializer_range 0.5): its logits differ from one
    example to the next by O(1), so that logits looked up for the wrong example would change the losses."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = model_class(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, initializer_range=0.5,
                                   **{**TINY, "num_hidden_layers": 6}, **config))
    model.config.architectures = [model_class.__name__]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def sst2_teacher(tmp_path, wordpiece_tokenizer_dir):
    return save_teacher(BertForSequenceClassification, tmp_path / "sst2", wordpiece_tokenizer_dir, num_labels=2,
                        id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})


@pytest.fixture
def built_caches(monkeypatch):
    """Every cache `build_teacher_cache` returns (they are dropped at the end of fit)."""
    built = []
    original = TaskDistillationMixin.build_teacher_cache

    def keep(self):
        built.append(original(self))
        return built[-1]

    monkeypatch.setattr(TaskDistillationMixin, "build_teacher_cache", keep)
    return built


def loss_log(root) -> list[dict]:
    return [json.loads(line) for line in (root.parent / f"{root.name}.jsonl").read_text().splitlines()]


def fit(args: list[str], root, *extra: str):
    return train.main(args=[*args, *QUIET, f"--trainer.default_root_dir={root}",
                            f"--trainer.logger.init_args.save_dir={root}", "--trainer.callbacks+=tests.cli.LossLog",
                            f"--trainer.callbacks.init_args.path={root}.jsonl", *extra])


# The teacher's logits of an example differ by float rounding (~1e-5 relative for these large-weight teachers) between
# the cache's sorted batches and the training batches (other padding, other kernels); logits of the wrong example would
# change the losses by O(1).
CLOSE = dict(rtol=1e-4, atol=1e-4)


def assert_same_runs(cached, per_step, cached_log, per_step_log) -> None:
    """Same batches, same losses, same student weights at the end."""
    assert [r["examples"] for r in cached_log] == [r["examples"] for r in per_step_log]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in cached_log]),
                               torch.tensor([r["loss"] for r in per_step_log]), **CLOSE)
    for (name, a), (_, b) in zip(cached.model.state_dict().items(), per_step.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name, **CLOSE)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_glue_cache_gives_the_per_step_losses_and_weights(tmp_path, data_dir, sst2_teacher, built_caches,
                                                          group_by_length):
    args = glue_args(tmp_path, data_dir, sst2_teacher, "--trainer.max_epochs=2",
                     f"--data.init_args.group_by_length={group_by_length}")
    cached = fit(args, tmp_path / "cached")
    per_step = fit(args, tmp_path / "per_step", "--model.init_args.cache_teacher_logits=false")
    (cache,) = built_caches  # one pass for the two epochs; none with the switch off
    module = cached.model
    assert cache.shape == (24, 2) and module.teacher_cache is None  # freed at the end of fit
    # keyed by example_index: row i holds the teacher's logits of training example i on its own (no padding)
    dataset = cached.datamodule.train_dataset
    with torch.no_grad():
        alone = torch.cat([module.teacher(**{k: torch.tensor([dataset[i][k]]) for k in
                                             ("input_ids", "attention_mask", "token_type_ids")}).logits
                           for i in range(len(dataset))])
    assert list(dataset["example_index"]) == list(range(24))
    torch.testing.assert_close(cache, alone, **CLOSE)
    log, reference = loss_log(tmp_path / "cached"), loss_log(tmp_path / "per_step")
    assert len(log) == 12 and {r["epoch"] for r in log} == {0, 1}
    assert_same_runs(cached.model, per_step.model, log, reference)
    # the cosine term is off (alpha_cos 0): neither computed nor logged
    assert "train/loss_cos" not in cached.trainer.logged_metrics and "train/loss_ce" in cached.trainer.logged_metrics


def test_qa_cache_gives_the_per_step_losses(tmp_path, data_dir, wordpiece_tokenizer_dir, built_caches):
    save_teacher(BertForQuestionAnswering, tmp_path / "qa", wordpiece_tokenizer_dir)
    args = ["fit", "--config", "configs/distill/squad.yaml", f"--model.init_args.teacher={tmp_path / 'qa'}",
            f"--data.init_args.tokenizer={tmp_path / 'qa'}", f"--data.init_args.data_dir={data_dir}",
            "--data.init_args.train_articles=null", "--data.init_args.eval_articles=null",
            "--data.init_args.max_seq_length=64",
            "--data.init_args.doc_stride=16", "--data.init_args.batch_size=4", "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu"]
    cached = fit(args, tmp_path / "cached")
    per_step = fit(args, tmp_path / "per_step", "--model.init_args.cache_teacher_logits=false")
    (cache,) = built_caches
    assert cache.shape == (len(cached.datamodule.train_dataset), 64, 2)
    assert_same_runs(cached.model, per_step.model, loss_log(tmp_path / "cached"), loss_log(tmp_path / "per_step"))


def test_token_packing_ignores_the_padding_side():
    torch.manual_seed(0)
    values, lengths = torch.randn(3, 5, 2), torch.tensor([5, 2, 3])
    right = (torch.arange(5) < lengths[:, None]).long()
    left = right.flip(1)
    shifted = torch.stack([v.roll(int(5 - n), 0) for v, n in zip(values, lengths)])  # the same tokens, left-padded
    packed = pack_tokens(values, right, 7)
    assert packed.shape == (3, 7, 2) and packed[1, 2:].abs().sum() == 0
    torch.testing.assert_close(pack_tokens(shifted, left, 7), packed)
    torch.testing.assert_close(unpack_tokens(packed, right), values * right[..., None])
    torch.testing.assert_close(unpack_tokens(packed, left), shifted * left[..., None])


def test_short_runs_and_the_cosine_term_keep_the_per_step_teacher(tmp_path, data_dir, sst2_teacher,
                                                                  built_caches):
    # 3 steps of 4 examples: less than the 24-row epoch; alpha_cos 1: the teacher's hidden states at every step
    fit(glue_args(tmp_path, data_dir, sst2_teacher, "--trainer.max_steps=3"), tmp_path / "short")
    cli = fit(glue_args(tmp_path, data_dir, sst2_teacher, "--trainer.max_epochs=1",
                        "--model.init_args.alpha_cos=1.0"), tmp_path / "cos")
    assert built_caches == [] and "train/loss_cos" in cli.trainer.logged_metrics


def test_a_batch_from_the_cache_costs_the_student_only(sst2_teacher):
    module = GLUEDistillationModule(teacher=str(sst2_teacher), task_name="sst2", num_labels=2)
    ids = torch.randint(5, 50, (4, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0]),
             "example_index": torch.tensor([3, 0, 2, 1])}
    with_teacher = module.batch_flops(batch, "train")
    module.teacher_cache, module.teacher_cache_column = torch.randn(4, 2), "example_index"
    # the teacher's forward as `classify` runs it: the last layer at the first token of each of the 4 rows
    assert module.batch_flops(batch, "train") == with_teacher - forward_flops(module.teacher, 4, 9, last_layer_rows=4)
    terms = module.distillation_terms(batch)
    expected = torch.nn.functional.kl_div(
        torch.log_softmax(module(batch) / 2, -1), torch.log_softmax(module.teacher_cache[[3, 0, 2, 1]] / 2, -1),
        reduction="batchmean", log_target=True) * 4
    torch.testing.assert_close(terms["ce"], expected)


@pytest.mark.parametrize("world", [1, 3])
def test_inference_loader_sorts_by_length_and_shards_every_row_once(data_dir, wordpiece_tokenizer_dir, tmp_path,
                                                                    world):
    from datamodules.glue import GLUEDataModule

    dm = GLUEDataModule(tokenizer=str(wordpiece_tokenizer_dir), task_name="mrpc", data_dir=str(data_dir),
                        cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    lengths = [len(ids) for ids in dm.train_dataset["input_ids"]]
    shards = []
    for rank in range(world):
        batches = list(dm.train_inference_loader(batch_size=5, num_replicas=world, rank=rank))
        assert set(batches[0]) == {"input_ids", "attention_mask", "token_type_ids", "example_index"}
        rows = [i for b in batches for i in b["example_index"].tolist()]
        assert [lengths[i] for i in rows] == sorted((lengths[i] for i in rows), reverse=True)  # longest first
        for b in batches:  # each row's own tokens, padded to the batch's longest only
            assert b["input_ids"].shape[1] == max(lengths[i] for i in b["example_index"].tolist())
        shards.append(rows)
    assert sorted(i for rows in shards for i in rows) == list(range(24))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
