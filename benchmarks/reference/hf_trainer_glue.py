"""Reference: GLUE fine-tuning the way transformers' examples/pytorch/text-classification/run_glue.py does it, cut to
what a training run of `--max_steps` steps executes (no evaluation, no prediction, no metrics).

The steps of run_glue.py, in its order: read the train file with `datasets.load_dataset` (csv; GLUE's .tsv with a tab
delimiter), the sorted label list, `AutoConfig` with num_labels, `AutoTokenizer`, `AutoModelForSequenceClassification`,
tokenize with `datasets.map` (batched, `padding=False`, `truncation=True`, `max_length=max_seq_length`: padding is
left to the collator), labels mapped to ids, `DataCollatorWithPadding` (dynamic padding to each batch's longest),
`Trainer(...).train()`, then `trainer.save_model()`. Everything not named on the command line is the Trainer's default
(fused AdamW, linear schedule, max_grad_norm 1.0, seed 42, random sampling, no dataloader workers, logging every 500
steps); `--train_sampling_strategy group_by_length` is its own length-grouped sampler. Independent of litbert: only
transformers, datasets and torch. Prints `optimizer_steps=N` at the end (the benchmark checks it).

    python benchmarks/reference/hf_trainer_glue.py --model DIR --train_file .../glue/SST-2/train.tsv --max_steps 50
"""
from __future__ import annotations

import argparse
import csv

import torch
from datasets import load_dataset
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory or hub name")
    p.add_argument("--train_file", required=True, help="a GLUE train.tsv (header line, label column 'label')")
    p.add_argument("--text_columns", nargs="+", default=["sentence"])
    p.add_argument("--task_name", default="sst2")
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=5e-5)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.98)
    p.add_argument("--adam_epsilon", type=float, default=1e-6)
    p.add_argument("--train_sampling_strategy", default="random", choices=["random", "group_by_length"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="the Trainer's bf16=True (autocast; its default is fp32)")
    p.add_argument("--output_dir", default="hf_output")
    return p.parse_args()


def main():
    args = parse_args()
    # GLUE's .tsv files are not quoted CSV: a sentence may hold a lone '"' (QUOTE_NONE, as the GLUE readers do).
    raw = load_dataset("csv", data_files={"train": args.train_file}, delimiter="\t", quoting=csv.QUOTE_NONE)
    label_list = sorted(raw["train"].unique("label"))
    config = AutoConfig.from_pretrained(args.model, num_labels=len(label_list), finetuning_task=args.task_name)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, config=config)
    label_to_id = {label: i for i, label in enumerate(label_list)}

    def preprocess_function(examples):
        texts = [examples[c] for c in args.text_columns]
        result = tokenizer(*texts, padding=False, max_length=args.max_seq_length, truncation=True)
        result["label"] = [label_to_id[label] for label in examples["label"]]
        return result

    train_dataset = raw.map(preprocess_function, batched=True, desc="Running tokenizer on dataset")["train"]
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        train_sampling_strategy=args.train_sampling_strategy,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        use_cpu=not args.device.startswith("cuda"),
        bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    train_result = trainer.train()
    trainer.save_model()
    print(f"train_loss={train_result.training_loss:.4f}")
    print(f"optimizer_steps={trainer.state.global_step}")


if __name__ == "__main__":
    main()
