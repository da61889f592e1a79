"""Raw-text inference with any litbert export: one command for text classifiers, extractive QA and fill-mask models.

    python scripts/predict_text.py artifacts/main_job/student/best --text "a gripping, funny film"
    python scripts/predict_text.py MNLI_EXPORT --text "A man plays the guitar." --text_pair "Someone makes music."
    python scripts/predict_text.py SQUAD_EXPORT --question "Who wrote it?" --context "$(cat page.txt)"
    python scripts/predict_text.py MLM_EXPORT --text "The film was [MASK]." --top_k 5
    python scripts/predict_text.py EXPORT --input texts.tsv --output predictions.jsonl   # .tsv/.csv/.jsonl in

What the export does comes from its config.json (`architectures`); the settings evaluation used (max_seq_length,
doc_stride, n-best, SQuAD v2.0 null answers) from its model card, each overridable here. Input files are TSV, CSV or
JSON lines with named columns: classification reads --text_column (default `text`, or the GLUE task's own columns
for a GLUE export) and --text_pair_column (default `text_pair` when there is one); QA reads `question` and `context`;
fill-mask reads --text_column. Results go to stdout, readable, or to --output (.tsv or .jsonl, written atomically)
with the input's line numbers. Bad input is one line, `error: ...`, naming the option, file or line (exit status 2;
LITBERT_DEBUG=1 shows the traceback). The Python API is evaluation/inference.py (`Predictor`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from cli_errors import DEBUG_ENV, EXIT_BAD_INPUT, user_error_message  # noqa: E402
from datamodules.files import DataFormatError, Table, read_table  # noqa: E402
from datamodules.tasks import GLUE_TASKS  # noqa: E402
from evaluation.inference import Predictor, table_rows  # noqa: E402
from evaluation.writers import records_format, write_records  # noqa: E402

DEFAULT_TOP_K = 5


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as the one line `error: ...` (argparse would print the usage first)."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (--help lists the options)\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="export directory (HFExport's best/last, scripts/convert_checkpoint.py output)")
    given = p.add_argument_group("inputs on the command line (repeat an option for several)")
    given.add_argument("--text", action="append", help="a text (classification, fill-mask: with the mask token)")
    given.add_argument("--text_pair", action="append", help="classification: the second text of a pair")
    given.add_argument("--question", action="append", help="QA: a question")
    given.add_argument("--context", action="append", help="QA: its context (one for all questions, or one each)")
    files = p.add_argument_group("inputs and outputs as files")
    files.add_argument("--input", help="TSV, CSV or JSON-lines file with named columns")
    files.add_argument("--output", help="write the results here: .tsv or .jsonl (default: print them)")
    files.add_argument("--text_column", help="column of the texts (default: text, or the GLUE task's columns)")
    files.add_argument("--text_pair_column", help="column of the second texts (default: text_pair if present)")
    files.add_argument("--question_column", default="question", help="QA: column of the questions")
    files.add_argument("--context_column", default="context", help="QA: column of the contexts")
    run = p.add_argument_group("inference")
    run.add_argument("--top_k", type=int, help=f"fill-mask: tokens per mask (default {DEFAULT_TOP_K})")
    run.add_argument("--batch_size", type=int, default=32, help="inputs (QA: windows) per forward pass")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)")
    run.add_argument("--max_seq_length", type=int, help="longest input in tokens (default: as the model was "
                     "evaluated, from its model card)")
    run.add_argument("--doc_stride", type=int, help="QA: overlap of the windows of a long context (default: card)")
    run.add_argument("--n_best_size", type=int, help="QA: start/end candidates per window (default: card, or 20)")
    run.add_argument("--max_answer_length", type=int, help="QA: longest answer in tokens (default: card, or 30)")
    run.add_argument("--version_2", action=argparse.BooleanOptionalAction, default=None,
                     help="QA: allow 'no answer' (default: when the card says squad_v2)")
    run.add_argument("--null_score_diff_threshold", type=float, help="QA v2.0: no answer when null score - best "
                     "span score exceeds it (default: card, or 0)")
    return p.parse_args(argv)


# ---- inputs ----------------------------------------------------------------------------------------------------------
def places(option: str, n: int) -> list[str]:
    """How errors name inputs given on the command line: `--text`, or `--text #2` when repeated."""
    return [option] if n == 1 else [f"{option} #{i + 1}" for i in range(n)]


def check_options(args, kind: str, model_dir: str) -> None:
    """Refuse the options of another kind of export, and inputs given two ways or not at all."""
    qa_options = [o for o in ("question", "context") if getattr(args, o)]
    uses = {"classification": "--text (and --text_pair for pairs)", "question-answering": "--question and --context",
            "fill-mask": "--text with the mask token"}[kind]
    wrong = qa_options if kind != "question-answering" else (["text"] if args.text else [])
    wrong += ["text_pair"] if args.text_pair and kind != "classification" else []
    wrong += ["top_k"] if args.top_k is not None and kind != "fill-mask" else []
    if wrong:
        raise ValueError(f"--{wrong[0]} does not apply: {model_dir} is a {kind} model; give {uses}")
    on_command_line = args.text or args.question or args.context or args.text_pair
    if args.input and on_command_line:
        raise ValueError("--input: give the inputs either in a file or on the command line, not both")
    if not args.input and not on_command_line:
        raise ValueError(f"nothing to predict: give {uses}, or a file with --input")


def column(table: Table, name: str, option: str) -> list:
    """Every row's value of column `name`; a missing column names the option that chooses it."""
    try:
        return table.values(name)
    except DataFormatError as err:
        raise DataFormatError(f"{err} (choose the column with {option})") from None


def text_columns(table: Table, args, task: str | None) -> tuple[str, str | None]:
    """(text column, pair column or None): the options, else the GLUE task's columns, else text / text_pair."""
    if args.text_column:
        return args.text_column, args.text_pair_column
    spec = GLUE_TASKS.get(task or "")
    named = spec is not None and spec.header and all(isinstance(c, str) for c in spec.text_columns)
    if named and all(table.column_reader(c, required=False) for c in spec.text_columns):
        return spec.text_columns[0], (spec.text_columns[1] if len(spec.text_columns) > 1 else None)
    pair = args.text_pair_column or ("text_pair" if table.column_reader("text_pair", required=False) else None)
    return "text", pair


def predict(predictor: Predictor, args) -> list[dict]:
    """The records for the inputs of `args`; from a file, each starts with its `line` (and `id` where the file has
    that column), so that the results join back to the input."""
    if not args.input:
        return predict_inputs(predictor, args, None)
    table = read_table(Path(args.input))
    records = predict_inputs(predictor, args, table)
    leading = [{"line": n} for n in table.line_numbers]
    if table.column_reader("id", required=False):
        leading = [{**lead, "id": value} for lead, value in zip(leading, table.values("id"))]
    return [{**lead, **record} for lead, record in zip(leading, records)]


def predict_inputs(predictor: Predictor, args, table: Table | None) -> list[dict]:
    """The records for the inputs of `args` (from `table`, the --input file, where given), in order."""
    kind, batch_size = predictor.kind, args.batch_size
    if table is not None:
        where = [f"{args.input}, line {n}" for n in table.line_numbers]
    if kind == "question-answering":
        if table is not None:
            questions = column(table, args.question_column, "--question_column")
            contexts = column(table, args.context_column, "--context_column")
        else:
            questions, contexts = args.question or [], args.context or []
            if not questions or not contexts:
                raise ValueError(f"--{'question' if not questions else 'context'} is missing: QA needs both")
            if len(contexts) not in (1, len(questions)):
                raise ValueError(f"--context given {len(contexts)} times for {len(questions)} questions: give one "
                                 f"context for all of them, or one each")
            contexts = contexts * len(questions) if len(contexts) == 1 else contexts
            where = places("--question", len(questions))
        return predictor.answer(questions, contexts, batch_size, where)
    if table is not None:
        text_column, pair_column = text_columns(table, args, predictor.task)
        texts = column(table, text_column, "--text_column")
        pairs = column(table, pair_column, "--text_pair_column") if pair_column else None
    else:
        texts, pairs = args.text or [], args.text_pair
        if pairs and len(pairs) != len(texts):
            raise ValueError(f"--text_pair given {len(pairs)} times for {len(texts)} --text: give one pair per text")
        where = places("--text", len(texts))
    if kind == "classification":
        return predictor.classify(texts, pairs, batch_size, where)
    return predictor.fill_mask(texts, args.top_k or DEFAULT_TOP_K, batch_size, where)


# ---- outputs ---------------------------------------------------------------------------------------------------------
def readable(kind: str, record: dict) -> str:
    """One record for the terminal."""
    if kind == "classification":
        inputs = record["text"] + (f"  |  {record['text_pair']}" if "text_pair" in record else "")
        if "value" in record:
            return f"{record['value']:.4f}  {inputs}"
        return f"{record['label']} ({record['score']:.3f})  {inputs}"
    if kind == "question-answering":
        if record["start"] is not None:
            answer = (f"{record['answer']!r}  (score {record['score']:.2f}, characters {record['start']}-"
                      f"{record['end']} of the context)")
        elif "null_odds" in record:
            answer = f"no answer (null score - best span score = {record['null_odds']:.2f})"
        else:
            answer = "no answer (no valid span)"
        return f"Q: {record['question']}\nA: {answer}"
    lines = [record["text"]]
    for m, candidates in enumerate(record["masks"], start=1):
        lines.append(f"  mask {m}: " + ", ".join(f"{c['token']} ({c['score']:.3f})" for c in candidates))
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    """Parse, predict, print or write; returns the records (raises on bad input: `run` prints it as one line)."""
    args = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in a command's output
    if args.output:
        try:
            records_format(args.output)  # a bad extension fails before the model is loaded
        except ValueError as err:
            raise ValueError(f"--output {err}") from None
    if args.input and not Path(args.input).is_file():
        raise FileNotFoundError(f"--input {args.input}: no such file")
    predictor = Predictor(args.model_dir, args.device, args.max_seq_length, args.doc_stride, args.n_best_size,
                          args.max_answer_length, args.version_2, args.null_score_diff_threshold)
    check_options(args, predictor.kind, args.model_dir)
    records = predict(predictor, args)
    if args.output:
        rows = [row for r in records for row in table_rows(predictor.kind, r)]
        print(f"wrote {len(records)} predictions to {write_records(args.output, records, rows)}")
    else:
        print("\n".join(readable(predictor.kind, r) for r in records))
    return records


def run(argv=None) -> int:
    """`python scripts/predict_text.py ...`: `main`, with bad input as one line `error: ...` and exit status 2."""
    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 (anything that is not bad input is re-raised with its traceback)
        debug = os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
        message = None if debug else user_error_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(run())
