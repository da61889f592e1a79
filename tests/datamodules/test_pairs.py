"""SEGMENT-PAIR / SENTENCE-PAIR inputs (datamodules/pairs.py): the splitter, the chunks, NSP negatives from another
document, SOP swaps, about half of each, lengths within the block, pairs a function of (seed, epoch, index), no pair
across splits, the tokenizer's pair template, and the option errors."""
import random
import re

import numpy as np
import pytest

from datamodules.pairs import (PairTemplate, chunk_target, document_chunks, pair_generator, sentence_lengths,
                              split_sentences)

WORDS = "the game was released in and its story follows a team of players who won the cup".split()


def write_marked_corpus(path, documents: int, first: int = 0, seed: int = 0):
    """One document per line; every sentence names its document and line ("Doc 7 line 3 ..."), capitalised as in
    WikiText, so a pair tells where its segments come from."""
    rng = random.Random(seed)
    lines = []
    for d in range(first, first + documents):
        sentences = [f"Doc {d} line {s} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + " ."
                     for s in range(2 * rng.randint(2, 4))]  # even: SENTENCE-PAIR cuts no sentence
        lines.append(" ".join(sentences))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def pair_dm(text_dm, tmp_path):
    """Factory: a pair-format TextCorpusDataModule on the marked corpus (train docs 0-79, validation docs 1000-1019)."""
    train = write_marked_corpus(tmp_path / "train.txt", 80)
    val = write_marked_corpus(tmp_path / "valid.txt", 20, first=1000, seed=1)

    def make(**kwargs):
        kwargs.setdefault("packing", "sentence_pair")
        kwargs.setdefault("max_seq_length", 128)  # the tiny BPE spells "Doc 7 line 3" byte by byte: no sentence cut
        dm = text_dm(train_files=[str(train)], val_files=[str(val)], text_layout="lines", **kwargs)
        dm.setup("fit")
        return dm

    return make


def markers(dm, ids) -> list[tuple[int, int]]:
    """(document, line) of every sentence start in a decoded segment."""
    return [(int(d), int(s)) for d, s in re.findall(r"Doc (\d+) line (\d+)", dm.tokenizer.decode(ids))]


def segments(dm, item) -> tuple[list[int], list[int]]:
    """(A, B) token ids of an encoded RoBERTa pair `<s> A </s></s> B </s>`."""
    ids = item["input_ids"]
    sep = dm.tokenizer.sep_token_id
    cut = ids.index(sep)
    assert ids[0] == dm.tokenizer.cls_token_id and ids[cut + 1] == sep and ids[-1] == sep
    return ids[1:cut], ids[cut + 2:-1]


def test_sentence_splitter_suits_wikitext():
    text = "The game began in 2010 . It was released ( in Japan ) . lit . Valkyria 3 ! \" Nameless \" units . x . y"
    starts = split_sentences(text)
    # a capital, digit or quote starts a sentence; a lower-case word does not ("( in Japan ) . lit"), and an
    # abbreviation before a capital is split (the regular expression's known error, see the module docstring)
    assert [text[s:s + 6] for s in starts] == ["The ga", "It was", "Valkyr", "\" Name"]
    # tokens go to the sentence holding their last character (a BPE token's offsets may start at the space before)
    assert sentence_lengths([(0, 3), (3, 8), (8, 10), (10, 14)], [0, 9]).tolist() == [2, 2]


def test_document_chunks_cover_the_document_within_the_budget():
    ids = np.arange(100, dtype=np.int32)
    lengths = np.array([7, 3, 12, 30, 5, 9, 2, 20, 4, 8])  # sentence lengths; 30 > budget // 2 is cut into pieces
    for max_pieces, budget in ((None, 24), (2, 24), (None, 61)):
        pairs = document_chunks(ids, lengths, budget, max_pieces, document=3)
        assert all(len(a) and len(b) and len(a) + len(b) <= budget for a, b in pairs)
        assert np.array_equal(np.concatenate([np.concatenate(p) for p in pairs]), ids)  # contiguous, in order
    sentence_pairs = document_chunks(ids, lengths, 24, 2, document=3)
    assert [len(a) for a, _ in sentence_pairs][:2] == [7, 12] and [len(b) for _, b in sentence_pairs][:2] == [3, 12]
    assert document_chunks(ids[:1], np.array([1]), 24, None, 0) == []  # one token makes no pair


def test_short_seq_prob_builds_some_chunks_to_a_random_shorter_length():
    """BERT's short_seq_prob: with probability p a chunk's target is uniform in [2, budget]; the rest fill the budget."""
    lengths = np.random.default_rng(0).integers(3, 15, size=600)  # 600 sentences of one document
    ids = np.arange(lengths.sum(), dtype=np.int32)

    def sizes(pairs):
        return [len(a) + len(b) for a, b in pairs]

    full = document_chunks(ids, lengths, 64, None, document=5)
    assert sizes(document_chunks(ids, lengths, 64, None, 5, short_seq_prob=0.0)) == sizes(full)
    short = document_chunks(ids, lengths, 64, None, 5, short_seq_prob=0.1)
    assert sizes(document_chunks(ids, lengths, 64, None, 5, short_seq_prob=0.1)) == sizes(short)  # deterministic
    assert np.array_equal(np.concatenate([np.concatenate(p) for p in short]), ids)  # contiguous, in order
    assert all(len(a) and len(b) and len(a) + len(b) <= 64 for a, b in short)
    targets = np.array([chunk_target(64, 0.1, 5, c) for c in range(len(short))])
    assert 0.03 < np.mean(targets < 64) < 0.2  # about one chunk in ten is short (BERT: 10%)
    # a full chunk stops when the next sentence (at most 14 tokens) would not fit: at least 51 tokens but the last
    assert sum(n < 40 for n in sizes(full)[:-1]) == 0
    short_ones = [n for n, t in zip(sizes(short), targets) if t < 40]
    assert short_ones and all(n < 40 + 14 for n in short_ones)
    drawn = np.array([chunk_target(64, 1.0, d, 0) for d in range(2000)])  # always short: uniform over [2, 64]
    assert drawn.min() == 2 and drawn.max() == 64 and abs(drawn.mean() - 33) < 1.5


@pytest.mark.parametrize("objective", ["nsp", "sop"])
def test_about_half_of_the_pairs_are_negatives_of_the_right_kind(pair_dm, objective):
    dm = pair_dm(sentence_objective=objective)
    data = dm.datasets["train"]
    assert len(data) >= 200
    labels = []
    for epoch, index in [(e, i) for e in range(3) for i in range(len(data))]:  # about 750 draws
        item = data[(epoch, index)]
        a, b = segments(dm, item)
        (doc_a, line_a), (doc_b, line_b) = markers(dm, a)[0], markers(dm, b)[0]
        if objective == "nsp":  # label 1: B from another document of the split; 0: the next sentence
            assert (doc_b != doc_a) if item["sentence_label"] else (doc_b, line_b) == (doc_a, line_a + 1)
        else:  # label 1: the same two sentences swapped
            assert doc_a == doc_b and line_b == line_a + (-1 if item["sentence_label"] else 1)
        labels.append(item["sentence_label"])
    n = len(labels)
    assert abs(np.mean(labels) - 0.5) < 4 * (0.25 / n) ** 0.5  # within 4 standard deviations of 1/2


@pytest.mark.parametrize("packing", ["segment_pair", "sentence_pair"])
@pytest.mark.parametrize("objective", ["none", "nsp", "sop"])
def test_every_pair_fits_the_block(pair_dm, packing, objective):
    dm = pair_dm(packing=packing, sentence_objective=objective, max_seq_length=24)  # long sentences get cut
    for split in ("train", "val"):
        data = dm.datasets[split]
        for epoch in range(3):
            for index in range(len(data)):
                item = data[(epoch, index)]
                a, b = segments(dm, item)
                assert a and b and len(item["input_ids"]) <= 24
                assert ("sentence_label" in item) == (objective != "none")


def test_segment_pairs_fill_the_block_with_several_sentences(pair_dm):
    data = pair_dm(packing="segment_pair").datasets["train"]
    lengths = data.pair_lengths
    assert lengths.max() <= 128 and np.median(lengths) > 80  # filled up to the block length, not one sentence each
    # short_seq_prob (default 0.1, BERT's) is part of the cache key: without it, more of the pairs fill the block
    full = pair_dm(packing="segment_pair", short_seq_prob=0.0).datasets["train"].pair_lengths
    assert len(full) < len(lengths) and np.mean(full > 100) > np.mean(lengths > 100)


def test_pairs_are_a_function_of_seed_epoch_and_index(pair_dm):
    first, again = pair_dm(sentence_objective="nsp"), pair_dm(sentence_objective="nsp")
    data, same = first.datasets["train"], again.datasets["train"]
    for index in (0, 5, 77):
        assert data[(2, index)] == same[(2, index)]  # a new DataModule (a resumed run) draws the same pair
    assert data[3] == data[(0, 3)]  # evaluation keys are epoch 0
    epochs = [[data[(e, i)]["sentence_label"] for i in range(60)] for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # new draws each epoch
    other_seed = pair_dm(sentence_objective="nsp", mask_seed=1).datasets["train"]
    assert [other_seed[(0, i)]["sentence_label"] for i in range(60)] != epochs[0]
    assert pair_generator(0, 1, 2).random() == pair_generator(0, 1, 2).random()


def test_the_training_loader_hands_the_epoch_to_the_dataset(pair_dm):
    dm = pair_dm(sentence_objective="sop", batch_size=8)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(4)  # what Lightning does at each epoch start
    batch = next(iter(loader))
    expected = [dm.datasets["train"][(4, int(i))]["sentence_label"] for i in batch["example_index"]]
    assert batch["sentence_label"].tolist() == expected and batch["sentence_label"].dtype.is_floating_point is False
    assert set(batch) == {"input_ids", "attention_mask", "example_index", "sentence_label"}


def test_no_pair_crosses_a_split(pair_dm):
    dm = pair_dm(sentence_objective="nsp")
    for split, docs in (("train", range(0, 80)), ("val", range(1000, 1020))):
        data = dm.datasets[split]
        for epoch in range(2):
            for index in range(len(data)):
                a, b = segments(dm, data[(epoch, index)])
                assert {d for d, _ in markers(dm, a) + markers(dm, b)} <= set(docs)


def test_bert_pairs_carry_token_types(text_dm, wordpiece_tokenizer_dir):
    template = PairTemplate(text_dm(tokenizer=str(wordpiece_tokenizer_dir)).tokenizer)
    out = template.encode(np.array([7, 8, 9]), np.array([10, 11]))
    assert out["input_ids"][0] == 2 and out["input_ids"][4] == 3 and out["input_ids"][-1] == 3  # [CLS] .. [SEP] .. [SEP]
    assert out["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1]
    dm = text_dm(tokenizer=str(wordpiece_tokenizer_dir), packing="segment_pair", sentence_objective="sop")
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["token_type_ids"].shape == batch["input_ids"].shape and batch["token_type_ids"].max() == 1
    roberta = PairTemplate(text_dm().tokenizer).encode(np.array([7]), np.array([8]))
    assert roberta == {"input_ids": [0, 7, 2, 2, 8, 2]}  # <s> A </s></s> B </s>, no token types


def test_pair_option_errors(text_dm, tmp_path):
    with pytest.raises(ValueError, match="needs pairs: set packing to segment_pair or sentence_pair"):
        text_dm(sentence_objective="sop")
    with pytest.raises(ValueError, match="cached mode only"):
        text_dm(packing="segment_pair", streaming=True)
    with pytest.raises(ValueError, match="sentence_objective must be one of"):
        text_dm(packing="segment_pair", sentence_objective="both")
    with pytest.raises(ValueError, match=r"short_seq_prob must be a probability in \[0, 1\], got 1.5"):
        text_dm(packing="segment_pair", short_seq_prob=1.5)
    one = write_marked_corpus(tmp_path / "one.txt", 1)
    with pytest.raises(ValueError, match="one document only"):
        text_dm(val_files=[str(one)], text_layout="lines", packing="segment_pair",
                sentence_objective="nsp").setup("validate")


def test_max_samples_and_smoothing_counts_with_pairs(pair_dm):
    dm = pair_dm(packing="segment_pair", max_train_samples=5, mlm_smoothing=0.7)
    rows = dm.datasets["train"].rows
    assert len(dm.datasets["train"]) == 5
    assert dm.token_counts().sum() == sum(len(r["first"]) + len(r["second"]) for r in rows)


def test_a_resumed_loader_continues_with_the_same_pairs(pair_dm):
    """The training loader's saved position (in every checkpoint) resumes mid-epoch with the pairs the
    uninterrupted run would have seen next."""
    import torch

    dm = pair_dm(sentence_objective="nsp", batch_size=8)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = dm.state_dict()
    expected = next(iterator)
    resumed = pair_dm(sentence_objective="nsp", batch_size=8)
    resumed.load_state_dict(state)
    again = resumed.train_dataloader()
    again.sampler.set_epoch(2)
    batch = next(iter(again))
    assert all(torch.equal(batch[k], expected[k]) for k in expected)


def test_workers_and_length_grouping_draw_the_same_pairs(pair_dm):
    """DataLoader workers hold copies of the dataset: the (epoch, index) keys give them the epoch's pairs; length
    grouping orders the pairs by their cached lengths."""
    import torch

    plain = pair_dm(sentence_objective="nsp", batch_size=8)
    workers = pair_dm(sentence_objective="nsp", batch_size=8, num_workers=2, group_by_length=True)
    loader = workers.train_dataloader()
    loader.sampler.set_epoch(3)
    batch = next(iter(loader))
    data = plain.datasets["train"]
    items = [data[(3, int(i))] for i in batch["example_index"]]
    assert batch["sentence_label"].tolist() == [item["sentence_label"] for item in items]
    for row, item in zip(batch["input_ids"], items):
        assert row[: len(item["input_ids"])].tolist() == item["input_ids"]
    lengths = torch.as_tensor(data.pair_lengths[batch["example_index"].numpy()])  # the true pairs' lengths
    assert torch.equal(lengths, lengths.sort(descending=True).values)  # longest first inside the mega-batch
