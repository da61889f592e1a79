"""MLMMasker: rates, 80/10/10, no special/padding, pure function of (seed, epoch, index), static, whole-word, smoothing."""
import pytest
import torch
from transformers import AutoTokenizer

from datamodules.masking import IGNORE_INDEX, MLMMasker, hash_keys, mix32, word_start_rule, word_start_table
from tests import fixtures


@pytest.fixture(scope="module")
def bpe(bpe_tokenizer_dir):
    return AutoTokenizer.from_pretrained(bpe_tokenizer_dir)


@pytest.fixture(scope="module")
def wordpiece(wordpiece_tokenizer_dir):
    return AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)


@pytest.fixture(scope="module")
def markdown_bpe(tmp_path_factory, data_dir):
    """A byte-level BPE trained on the fixture corpus plus markdown headings: '##' and '###' are in its vocabulary."""
    from datamodules.tokenizer import train_byte_level_bpe

    corpus = tmp_path_factory.mktemp("markdown") / "train.txt"
    text = (data_dir / "wikitext-2" / "train.txt").read_text(encoding="utf-8")
    corpus.write_text(text + "".join(f"## heading {i}\n### section {i}\n" for i in range(20)), encoding="utf-8")
    return train_byte_level_bpe([corpus], corpus.parent / "tokenizer", vocab_size=400, min_frequency=1)


@pytest.fixture(scope="module")
def unigram(tmp_path_factory, data_dir):
    """A SentencePiece-style Unigram (Metaspace '▁' pre-tokenizer) trained offline on the fixture corpus."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceUnigramTokenizer()
    lines = (data_dir / "wikitext-2" / "train.txt").read_text(encoding="utf-8").splitlines()
    sp.train_from_iterator([line for line in lines if line.strip()], vocab_size=150,
                           special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<mask>"], unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", mask_token="<mask>")


# The word-start rule of each test tokenizer written out by hand (independent of word_start_table).
REFERENCE_STARTS = {
    "bpe": lambda t: t.startswith("Ġ"),
    "markdown_bpe": lambda t: t.startswith("Ġ"),
    "wordpiece": lambda t: not t.startswith("##"),
    "unigram": lambda t: t.startswith("▁"),
}


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


def words_of(tokenizer, input_ids, attention_mask, is_start):
    """Word id per candidate token (-1 elsewhere), rebuilt with a plain loop as the reference: a new word starts at
    each token for which `is_start(token string)` holds and after any special token or padding."""
    starts = [is_start(t or "") for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
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


@pytest.mark.parametrize("tokenizer_name", ["bpe", "wordpiece", "unigram", "markdown_bpe"])
def test_whole_word_masking_masks_words_together(tokenizer_name, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    # Words the tiny vocabularies must split into several pieces, mixed with known words (and markdown headings).
    texts = [" the zorblaxian riverwalk was released in westernmost city . " * 3, " played excellentness games .",
             "## heading the zorblaxian riverwalk\n### section westernmost city ## heading ### section"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    input_ids, attention_mask = enc["input_ids"].repeat(64, 1), enc["attention_mask"].repeat(64, 1)
    masker = MLMMasker(tokenizer, seed=0, whole_word_mask=True)
    _, labels = masker(input_ids, attention_mask, torch.arange(len(input_ids)), epoch=0)
    selected = labels != IGNORE_INDEX
    word = words_of(tokenizer, input_ids, attention_mask, REFERENCE_STARTS[tokenizer_name])
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


def test_word_start_rule_comes_from_the_tokenizer_kind_not_the_vocabulary(bpe, wordpiece, unigram, markdown_bpe):
    vocab = markdown_bpe.get_vocab()
    assert "##" in vocab and "###" in vocab, "the markdown BPE must have learnt '##' and '###'"
    # Its continuation pieces (no 'Ġ') are not word starts, whatever '##' tokens the vocabulary holds.
    assert word_start_rule(markdown_bpe) == ("start", "Ġ") == word_start_rule(bpe)
    starts = word_start_table(markdown_bpe)
    assert not starts[vocab["##"]] and not starts[vocab["###"]]
    assert starts[vocab["Ġheading"]] and not starts[vocab["eading"]]
    tokens = markdown_bpe.convert_ids_to_tokens(list(range(len(markdown_bpe))))
    special = set(markdown_bpe.all_special_ids)
    assert [bool(s) for i, s in enumerate(starts.tolist()) if i not in special] == \
        [t.startswith("Ġ") for i, t in enumerate(tokens) if i not in special]
    assert word_start_rule(wordpiece) == ("continuation", "##")
    wp_vocab = wordpiece.get_vocab()
    assert word_start_table(wordpiece)[wp_vocab["the"]] and not word_start_table(wordpiece)[wp_vocab["##a"]]
    assert word_start_rule(unigram) == ("start", "▁")


def _wrap(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", mask_token="<mask>")


def test_word_start_rule_other_backends_and_unknown_kinds():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"<unk>": 0, "<mask>": 1, "▁a": 2, "b": 3, "a": 4, "##b": 5}
    # Llama-style: no pre-tokenizer, the normalizer turns spaces into '▁'.
    llama = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    llama.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    assert word_start_rule(_wrap(llama)) == ("start", "▁")
    # Metaspace nested inside a pre-tokenizer Sequence, with a custom replacement character.
    nested = Tokenizer(models.Unigram([("<unk>", 0.0), ("<mask>", 0.0), ("_a", -1.0), ("b", -2.0)], unk_id=0))
    nested.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                    pre_tokenizers.Metaspace(replacement="_")])
    assert word_start_rule(_wrap(nested)) == ("start", "_")
    # ByteLevel inside a Sequence (GPT-4/Llama-3 style: Split regex then ByteLevel without its own regex).
    gpt = Tokenizer(models.BPE({"<unk>": 0, "<mask>": 1, "Ġa": 2, "b": 3}, [], unk_token="<unk>"))
    gpt.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(r"\s+", "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert word_start_rule(_wrap(gpt)) == ("start", "Ġ")
    # A BPE trained with a continuation prefix marks continuations, as WordPiece does.
    prefixed = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", continuing_subword_prefix="##"))
    prefixed.pre_tokenizer = pre_tokenizers.Whitespace()
    assert word_start_rule(_wrap(prefixed)) == ("continuation", "##")
    # Kinds it cannot tell: a word-level model; a BPE with neither markers nor prefix.
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    plain_bpe = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    plain_bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    for backend in (word_level, plain_bpe):
        with pytest.raises(ValueError, match="cannot tell word starts"):
            MLMMasker(_wrap(backend), whole_word_mask=True)
        MLMMasker(_wrap(backend))  # without whole-word masking any tokenizer with a mask token is fine


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
