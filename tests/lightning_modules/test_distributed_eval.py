"""Evaluation over unequal, unpadded shards (`DistributedEvalSampler`), ranks simulated in-process: SQuAD scores
from logits gathered by `feature_index` are those of one process."""
import torch

import lightning_modules.qa as qa
from datamodules.samplers import DistributedEvalSampler
from evaluation.squad import squad_scores
from tests import fixtures


def test_squad_gathered_from_unequal_shards_scores_like_one_process(tmp_path, wordpiece_tokenizer_dir, tiny_bert_dir,
                                                                      monkeypatch):
    from datamodules.squad import SQuADDataModule

    fixtures.write_squad(tmp_path / "squad" / "dev-v1.1.json", n_articles=1, n_paragraphs=3, long_context=True,
                         seed=3)
    dm = SQuADDataModule(str(wordpiece_tokenizer_dir), train_file=None, eval_file="squad/dev-v1.1.json",
                         train_articles=None, eval_articles=None, data_dir=str(tmp_path), max_seq_length=64,
                         doc_stride=16, cache_dir=str(tmp_path / "cache"))
    dm.setup("validate")
    features = dm.eval_features
    torch.manual_seed(0)
    logits = {f: (torch.randn(len(ids)), torch.randn(len(ids))) for f, ids in enumerate(features["input_ids"])}
    module = qa.QuestionAnsweringModule(str(tiny_bert_dir), task_name=dm.task_name)

    module._outputs = [(f, *logits[f]) for f in range(len(features))]
    expected, _, golds = module._predictions(dm)

    world = 3  # shards of unequal sizes; a question's windows land on different ranks
    shards = [[(f, *logits[f]) for f in DistributedEvalSampler(len(features), world, r)] for r in range(world)]
    assert len({len(s) for s in shards}) == 2 and sum(map(len, shards)) == len(features)
    monkeypatch.setattr(qa, "gather_objects", lambda outputs: shards)  # what all_gather_object returns on each rank
    module._outputs = shards[1]
    predictions, _, gathered_golds = module._predictions(dm)
    assert predictions == expected and gathered_golds == golds and len(predictions) == len(dm.eval_examples)
    assert squad_scores(predictions, golds)["total"] == len(dm.eval_examples)
