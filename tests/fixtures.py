"""Tiny data in the official formats (GLUE TSV quirks, SQuAD JSON, tokenized WikiText), written to temporary folders.

Deterministic pseudo-text from a fixed word list; small enough that every test stays fast on 2 CPU cores.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the a of and to in is was for on that with as by at from his her it an were are which this be or has had "
    "game film music album song team city river war army king church school station road island company world "
    "released played built named called known found won lost made began became moved returned "
    "first second new old great small large early late north south east west good bad best worst "
    "season series episode character story player year month day time record chart number "
    "good great excellent fine funny boring dull awful terrible wonderful moving beautiful"
).split()
POSITIVE = ["good", "great", "excellent", "wonderful", "beautiful", "moving", "funny", "fine"]
NEGATIVE = ["bad", "boring", "dull", "awful", "terrible", "worst"]


def sentence(rng: random.Random, n_min: int = 5, n_max: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(n_min, n_max))) + " ."


def write_text_corpus(path: Path, n_articles: int = 6, seed: int = 0) -> Path:
    """WikiText-2 layout: lines start with a space, ` = Heading = ` lines start articles, blank lines between."""
    rng = random.Random(seed)
    lines = []
    for a in range(n_articles):
        lines += ["", f" = Article {a} = ", ""]
        for s in range(rng.randint(3, 6)):
            lines.append(" " + " ".join(sentence(rng) for _ in range(rng.randint(1, 4))))
            if s == 1:
                lines += ["", f" = = Section {a}.{s} = = ", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tsv(path: Path, rows: list[list[str]], header: list[str] | None, bom: bool = False, final_newline: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")


def write_glue(root: Path, n_train: int = 24, n_dev: int = 12, seed: int = 0) -> Path:
    """All nine GLUE tasks in the classic layout `<root>/glue/<TASK>/{train,dev}.tsv` with their real quirks.

    Returns `<root>/glue`. Quirks kept: CoLA has no header and no final newline in dev; MRPC starts with a BOM;
    unbalanced double quotes in MRPC/RTE/STS-B/QNLI/WNLI text; SST-2 sentences end with a space; MNLI has
    dev_matched/dev_mismatched; labels are strings for RTE/QNLI/MNLI.
    """
    rng = random.Random(seed)
    glue = Path(root) / "glue"

    def s():
        return sentence(rng)

    def quoted():  # an unbalanced double quote, as in the real files
        return '" ' + s()

    for split, n in (("train", n_train), ("dev", n_dev)):
        # CoLA: source, label, original mark, sentence; no header.
        rows = []
        for i in range(n):
            label = i % 2
            rows.append([f"gj04", label, "" if label else "*", s()])
        _tsv(glue / "CoLA" / f"{split}.tsv", rows, None, final_newline=(split == "train"))
        # SST-2: sentiment words decide the label so a tiny model can learn it; trailing space before the tab.
        rows = []
        for i in range(n):
            label = i % 2
            word = rng.choice(POSITIVE if label else NEGATIVE)
            rows.append([f"{s()[:-2]} {word} {word} ", label])
        _tsv(glue / "SST-2" / f"{split}.tsv", rows, ["sentence", "label"])
        # MRPC: BOM, label first.
        rows = [[i % 2, 1000 + i, 2000 + i, quoted() if i == 0 else s(), s()] for i in range(n)]
        _tsv(glue / "MRPC" / f"{split}.tsv", rows, ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], bom=True)
        # STS-B: 10 columns, float score in [0, 5].
        rows = [[i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", quoted() if i == 1 else s(),
                 s(), f"{(i * 0.37) % 5:.3f}"] for i in range(n)]
        _tsv(glue / "STS-B" / f"{split}.tsv", rows, ["index", "genre", "filename", "year", "old_index", "source1",
                                                        "source2", "sentence1", "sentence2", "score"])
        # QQP
        rows = [[i, 10 * i, 10 * i + 1, s() + " ?", s() + " ?", i % 2] for i in range(n)]
        _tsv(glue / "QQP" / f"{split}.tsv", rows, ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"])
        # QNLI, RTE: string labels.
        for task, cols in (("QNLI", ["index", "question", "sentence", "label"]),
                           ("RTE", ["index", "sentence1", "sentence2", "label"])):
            rows = [[i, quoted() if i == 2 else s(), s(), "entailment" if i % 2 else "not_entailment"] for i in range(n)]
            _tsv(glue / task / f"{split}.tsv", rows, cols)
        # WNLI: 0/1 labels.
        rows = [[i, s(), quoted() if i == 3 else s(), i % 2] for i in range(n)]
        _tsv(glue / "WNLI" / f"{split}.tsv", rows, ["index", "sentence1", "sentence2", "label"])

    # MNLI: train has 12 columns, dev_matched / dev_mismatched have 16 (five annotator labels + gold_label).
    labels = ["contradiction", "entailment", "neutral"]
    parse_cols = ["sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse", "sentence2_parse"]
    rows = [[i, i, f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s(), s(), labels[i % 3], labels[i % 3]]
            for i in range(n_train)]
    _tsv(glue / "MNLI" / "train.tsv", rows, ["index", "promptID", "pairID", "genre", *parse_cols, "sentence1",
                                             "sentence2", "label1", "gold_label"])
    dev_header = ["index", "promptID", "pairID", "genre", *parse_cols, "sentence1", "sentence2", "label1", "label2",
                  "label3", "label4", "label5", "gold_label"]
    for name in ("dev_matched", "dev_mismatched"):
        rows = [[i, i, f"{i}n", "slate", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s(), s(), *([labels[i % 3]] * 5),
                 labels[i % 3]] for i in range(n_dev)]
        _tsv(glue / "MNLI" / f"{name}.tsv", rows, dev_header)
    return glue


def squad_json(n_articles: int = 2, n_paragraphs: int = 2, with_impossible: bool = False, seed: int = 0,
               long_context: bool = False) -> dict:
    """A SQuAD-format dict. Answers are real substrings with correct `answer_start`; v2.0 adds unanswerable ones."""
    rng = random.Random(seed)
    data = []
    qid = 0
    for a in range(n_articles):
        paragraphs = []
        for p in range(n_paragraphs):
            n_sent = 30 if long_context else 4
            sents = [sentence(rng) for _ in range(n_sent)]
            answer = f"Zorblax {a}{p} River"
            pos = rng.randrange(len(sents))
            sents.insert(pos, f"the city lies near the {answer} .")
            context = " ".join(sents)
            start = context.index(answer)
            qas = [{"question": "which river is near the city ?", "id": f"q{qid:05d}",
                    "answers": [{"text": answer, "answer_start": start},
                                {"text": answer.split()[1] + " River", "answer_start": start + len("Zorblax ")}]}]
            qid += 1
            if with_impossible:
                for q in qas:
                    q["is_impossible"] = False
                qas.append({"plausible_answers": [{"text": answer, "answer_start": start}],
                            "question": "which mountain is near the city ?", "id": f"q{qid:05d}", "answers": [],
                            "is_impossible": True})
                qid += 1
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    return {"version": "v2.0" if with_impossible else "1.1", "data": data}


def write_squad(path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(squad_json(**kwargs)), encoding="utf-8")
    return path


def all_fixture_text() -> list[str]:
    """Every word the fixtures can produce, for building a tiny WordPiece vocabulary."""
    return WORDS + ["?", ".", ",", '"', "zorblax", "river", "mountain", "which", "near", "lies", "city"] + [
        str(d) for d in range(10)]
