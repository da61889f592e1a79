"""MLMMasker: rates, 80/10/10, no special/padding, pure function of (seed, epoch, index), static, whole-word, smoothing."""
import pytest
import torch
from transformers import AutoTokenizer

from datamodules.masking import IGNORE_INDEX, MLMMasker, hash_keys, mix32, word_start_table
from tests import fixtures


@pytest.fixture(scope="module")
def bpe(bpe_tokenizer_dir):
    return AutoTokenizer.from_pretrained(bpe_tokenizer_dir)


@pytest.fixture(scope="module")
def wordpiece(wordpiece_tokenizer_dir):
    return AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)


def fixture_batch(tokenizer, n=64, seed=0, max_length=96):
    """Real tokenized fixture sentences of different lengths, right-padded: (input_ids, attention_mask)."""
    import random

    rng = random.Random(seed)
    texts = [" ".join(fixtures.sentence(rng, 3, 30) for _ in range(rng.randint(1, 3))) for _ in range(n)]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_hash_is_uniform_and_python_int_matches_tensor():
    keys = hash_keys(seed=0, epoch=0, stream=1, example_index=torch.arange(200), length=100)
    assert keys.min() >= 0 and keys.max() < 2**32
    # Roughly uniform: each of 8 buckets holds 1/8 of 20,000 values (binomial sd ~47).
    counts = torch.bincount((keys >> 29).flatten(), minlength=8)
    assert (counts - 2500).abs().max() < 250
    values = [0, 1, 12345, 2**32 - 1]
    assert mix32(torch.tensor(values)).tolist() == [mix32(v) for v in values]


def test_selection_rate_and_80_10_10(bpe):
    input_ids, attention_mask = fixture_batch(bpe, n=256)
    masker = MLMMasker(bpe, seed=3)
    masked, labels = masker(input_ids, attention_mask, torch.arange(len(input_ids)), epoch=0)
    selected = labels != IGNORE_INDEX
    special = torch.isin(input_ids, torch.tensor(bpe.all_special_ids))
    candidates = attention_mask.bool() & ~special
    assert not (selected & ~candidates).any(), "special tokens or padding were selected"
    assert torch.equal(labels[selected], input_ids[selected])
    assert torch.equal(masked[~selected], input_ids[~selected]), "unselected tokens must stay unchanged"
    # Exactly floor(p * n + u) per sequence: floor or ceil of 15% of the candidates.
    per_row, n = selected.sum(1).double(), candidates.sum(1).double()
    assert ((per_row >= torch.floor(0.15 * n)) & (per_row <= torch.ceil(0.15 * n))).all()
    assert abs(per_row.sum() / n.sum() - 0.15) < 0.005
    total = selected.sum().item()
    assert total > 2000  # deterministic (seeded); tolerances below are ~3.5 binomial sd
    is_mask = (masked == bpe.mask_token_id) & selected
    kept = (masked == input_ids) & selected
    is_random = selected & ~is_mask & ~kept
    assert abs(is_mask.sum().item() / total - 0.8) < 0.03
    assert abs(is_random.sum().item() / total - 0.1) < 0.02
    assert abs(kept.sum().item() / total - 0.1) < 0.02
    assert not torch.isin(masked[is_random], torch.tensor(bpe.all_special_ids)).any(), "random tokens are never special"


def test_same_seed_epoch_index_same_mask_whatever_the_batch(bpe):
    input_ids, attention_mask = fixture_batch(bpe, n=16)
    index = torch.arange(100, 116)
    masker = MLMMasker(bpe, seed=7)
    full_ids, full_labels = masker(input_ids, attention_mask, index, epoch=2)
    # A "resumed" masker, another batch composition (reversed order, subset) and padding trimmed to the subset.
    rows = torch.tensor([9, 4, 1])
    width = int(attention_mask[rows].sum(1).max())
    sub_ids, sub_labels = MLMMasker(bpe, seed=7)(input_ids[rows, :width], attention_mask[rows, :width], index[rows], 2)
    assert torch.equal(sub_ids, full_ids[rows, :width])
    assert torch.equal(sub_labels, full_labels[rows, :width])
    # A new epoch or another seed gives new masks.
    for other in (masker(input_ids, attention_mask, index, epoch=3), MLMMasker(bpe, seed=8)(input_ids, attention_mask,
                                                                                             index, 2)):
        changed = ((other[1] != IGNORE_INDEX) != (full_labels != IGNORE_INDEX)).any(dim=1)
        assert changed.float().mean() > 0.9


def test_static_masking_repeats_with_period_k(bpe):
    input_ids, attention_mask = fixture_batch(bpe, n=8)
    index = torch.arange(8)
    masker = MLMMasker(bpe, seed=1, static_duplicates=3)
    epochs = [masker(input_ids, attention_mask, index, epoch=e)[1] for e in range(6)]
    for e in range(3):
        assert torch.equal(epochs[e], epochs[e + 3])
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    single = MLMMasker(bpe, seed=1, static_duplicates=1)
    assert torch.equal(single(input_ids, attention_mask, index, 0)[1], single(input_ids, attention_mask, index, 5)[1])


def words_of(tokenizer, input_ids, attention_mask):
    """Word id per candidate token (-1 elsewhere), rebuilt with a plain loop as the reference: a new word starts at
    each word-start token of the vocabulary and after any special token or padding."""
    starts = word_start_table(tokenizer)
    special = set(tokenizer.all_special_ids)
    word = torch.full_like(input_ids, -1)
    for b in range(input_ids.shape[0]):
        current, previous_special = -1, True
        for i, tok in enumerate(input_ids[b].tolist()):
            if not attention_mask[b, i] or tok in special:
                previous_special = True
                continue
            if previous_special or starts[tok]:
                current += 1
            word[b, i] = current
            previous_special = False
    return word


@pytest.mark.parametrize("tokenizer_name", ["bpe", "wordpiece"])
def test_whole_word_masking_masks_words_together(tokenizer_name, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    # Words the tiny vocabularies must split into several pieces, mixed with known words.
    texts = [" the zorblaxian riverwalk was released in westernmost city . " * 3, " played excellentness games ."]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    input_ids, attention_mask = enc["input_ids"].repeat(64, 1), enc["attention_mask"].repeat(64, 1)
    masker = MLMMasker(tokenizer, seed=0, whole_word_mask=True)
    _, labels = masker(input_ids, attention_mask, torch.arange(len(input_ids)), epoch=0)
    selected = labels != IGNORE_INDEX
    word = words_of(tokenizer, input_ids, attention_mask)
    multi_piece_selected = 0
    for b in range(len(input_ids)):
        for w in word[b].unique().tolist():
            if w < 0:
                continue
            in_word = selected[b][word[b] == w]
            assert in_word.all() or not in_word.any(), f"word {w} of row {b} partly masked"
            multi_piece_selected += int(in_word.all() and len(in_word) > 1)
    assert multi_piece_selected > 10, "the test needs multi-piece words to be selected"
    rate = selected.sum() / (word >= 0).sum()
    assert 0.10 < rate < 0.20


def test_smoothing_favours_rare_tokens(bpe):
    input_ids, attention_mask = fixture_batch(bpe, n=256)
    counts = torch.bincount(input_ids[attention_mask.bool()], minlength=len(bpe))
    index = torch.arange(len(input_ids))
    plain = MLMMasker(bpe, seed=0)(input_ids, attention_mask, index, 0)[1] != IGNORE_INDEX
    smooth = MLMMasker(bpe, seed=0, mlm_smoothing=0.7, token_counts=counts)(input_ids, attention_mask, index, 0)[1]
    smooth = smooth != IGNORE_INDEX
    frequent = counts[input_ids] >= torch.quantile(counts[counts > 0].double(), 0.9)  # the most frequent ids
    frequent &= attention_mask.bool()
    rate = lambda sel, where: (sel & where).sum().item() / where.sum().item()  # noqa: E731
    assert rate(smooth, frequent) < 0.7 * rate(plain, frequent)
    rare = attention_mask.bool() & ~frequent & ~torch.isin(input_ids, torch.tensor(bpe.all_special_ids))
    assert rate(smooth, rare) > rate(plain, rare)
    assert abs(smooth.sum().item() - plain.sum().item()) <= len(input_ids)  # same budget per sequence


def test_bad_arguments_are_named(bpe):
    with pytest.raises(ValueError, match="mlm_probability"):
        MLMMasker(bpe, mlm_probability=1.5)
    with pytest.raises(ValueError, match="static_duplicates"):
        MLMMasker(bpe, static_duplicates=0)
    with pytest.raises(ValueError, match="token_counts"):
        MLMMasker(bpe, mlm_smoothing=0.7)
    with pytest.raises(ValueError, match="sum to at most 1"):
        MLMMasker(bpe, mask_token_prob=0.9, random_token_prob=0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_and_gpu_masks_are_identical(bpe):
    input_ids, attention_mask = fixture_batch(bpe, n=32)
    index = torch.arange(32)
    for kwargs in ({}, {"whole_word_mask": True}):
        masker = MLMMasker(bpe, seed=5, **kwargs)
        cpu = masker(input_ids, attention_mask, index, 1)
        gpu = masker(input_ids.cuda(), attention_mask.cuda(), index.cuda(), 1)
        assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())
