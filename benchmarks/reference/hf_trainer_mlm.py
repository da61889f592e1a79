"""Reference: MLM pretraining from scratch the way transformers' examples/pytorch/language-modeling/run_mlm.py does it,
cut to what a training run of `--max_steps` steps executes (no evaluation, no perplexity).

The steps of run_mlm.py (without --line_by_line), in its order: load the text with `datasets.load_dataset` ("text"
for .txt files: one row per line), a RoBERTa config from the command line and `AutoModelForMaskedLM.from_config`,
tokenize every row with `datasets.map` (`return_special_tokens_mask=True`, no truncation), `group_texts`: concatenate
everything and cut it into blocks of `max_seq_length` tokens (the remainder dropped), `DataCollatorForLanguageModeling`
(15% of the tokens, 80/10/10, masked on the CPU in the dataloader), `Trainer(...).train()` (the loss over the full
[batch, length, vocabulary] logits), then `trainer.save_model()`. A SQuAD .json file is read with `load_dataset("json",
field="data")`, one row per paragraph context (run_mlm.py reads only flat text, csv and json files). Everything not
named on the command line is the Trainer's default (fused AdamW, linear schedule, max_grad_norm 1.0, seed 42, random
sampling, no dataloader workers). Independent of litbert: only transformers, datasets and torch. Prints
`optimizer_steps=N` at the end (the benchmark checks it).

    python benchmarks/reference/hf_trainer_mlm.py --tokenizer DIR --train_files .../wikitext-2/train.txt --max_steps 50
"""
from __future__ import annotations

import argparse
from itertools import chain

import torch
from datasets import concatenate_datasets, load_dataset
from transformers import (AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, RobertaConfig, Trainer,
                          TrainingArguments)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (a byte-level BPE)")
    p.add_argument("--train_files", nargs="+", required=True, help=".txt files and SQuAD .json files")
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--num_attention_heads", type=int, default=4)
    p.add_argument("--intermediate_size", type=int, default=1024)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_steps", type=int, default=60)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.98)
    p.add_argument("--adam_epsilon", type=float, default=1e-6)
    p.add_argument("--mlm_probability", type=float, default=0.15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="the Trainer's bf16=True (autocast; its default is fp32)")
    p.add_argument("--output_dir", default="hf_output")
    return p.parse_args()


def load_text(files: list[str]):
    """One {"text"} dataset: the .txt files' lines, then the SQuAD files' paragraph contexts, in the given order."""
    parts = []
    for path in files:
        if path.endswith(".json"):
            squad = load_dataset("json", data_files=path, field="data", split="train")
            parts.append(squad.map(lambda batch: {"text": [p["context"] for ps in batch["paragraphs"] for p in ps]},
                                   batched=True, remove_columns=squad.column_names))
        else:
            parts.append(load_dataset("text", data_files=path, split="train"))
    return concatenate_datasets(parts)


def main():
    args = parse_args()
    raw = load_text(args.train_files)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    # The size of litbert's roberta_small (models/mlm.py `model_config`): RoBERTa numbers positions from pad + 1.
    config = RobertaConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads, intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_seq_length + tokenizer.pad_token_id + 1, type_vocab_size=1,
        layer_norm_eps=1e-5)
    model = AutoModelForMaskedLM.from_config(config)
    max_seq_length = args.max_seq_length

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"],
                        desc="Running tokenizer on every text in dataset")

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // max_seq_length) * max_seq_length
        return {k: [t[i: i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated.items()}

    train_dataset = tokenized.map(group_texts, batched=True, desc=f"Grouping texts in chunks of {max_seq_length}")
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=args.mlm_probability)
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        use_cpu=not args.device.startswith("cuda"),
        bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=collator)
    train_result = trainer.train()
    trainer.save_model()
    print(f"train_loss={train_result.training_loss:.4f} blocks={len(train_dataset)}")
    print(f"optimizer_steps={trainer.state.global_step}")


if __name__ == "__main__":
    main()
