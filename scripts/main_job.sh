#!/usr/bin/env bash
# litbert's main job (`make train`): task-specific DistilBERT-style distillation on SST-2 from $DATA_DIR.
#   1. fine-tune the packaged MiniLM-L6 teacher (configs/finetune/glue.yaml), exported to $OUT/teacher/best
#   2. distil it into a 3-layer DistilBERT student (configs/distill/glue.yaml), exported to $OUT/student/best
#   3. compare teacher and student: dev accuracy, parameters, CPU latency (scripts/compare_models.py),
#      printed and written to $OUT/comparison.md
# Sized for a 2-core CPU (~5 minutes on an idle machine): a train subset, short length-grouped sequences, one epoch each. Override with the variables
# below (e.g. TRAIN_SAMPLES=67349 EPOCHS=3 for the whole training set). TensorBoard logs: runs/main_job-*.
# Progress: no progress bars (their redraws fill a log); the configs' ProgressLog callback prints a line every 50
# optimiser steps or minute (step/total, loss, lr, samples/s, elapsed, ETA) and after each validation, the first
# tokenization a line per cache it builds, and compare_models.py a line per model and stage.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-artifacts/main_job}
TRAIN_SAMPLES=${TRAIN_SAMPLES:-16000}
MAX_SEQ_LENGTH=${MAX_SEQ_LENGTH:-64}
EPOCHS=${EPOCHS:-1}
BATCH_SIZE=${BATCH_SIZE:-32}
TEACHER_LR=${TEACHER_LR:-1e-4}    # few steps: higher than the fine-tuning config's 5e-5
STUDENT_LR=${STUDENT_LR:-2e-4}

if [[ -z "${DATA_DIR:-}" ]]; then
    echo "main_job: DATA_DIR is not set; point it at the data folder that holds glue/SST-2 (see README: Data)" >&2
    exit 2
fi
for f in train.tsv dev.tsv; do
    if [[ ! -f "$DATA_DIR/glue/SST-2/$f" ]]; then
        echo "main_job: $DATA_DIR/glue/SST-2/$f not found: DATA_DIR must hold glue/SST-2/{train,dev}.tsv" \
             "(the classic GLUE layout; see README: Data)" >&2
        exit 2
    fi
done

COMMON=(
    --data.init_args.task_name=sst2 --data.init_args.data_dir="$DATA_DIR"
    --data.init_args.max_seq_length="$MAX_SEQ_LENGTH" --data.init_args.max_train_samples="$TRAIN_SAMPLES"
    --data.init_args.batch_size="$BATCH_SIZE" --data.init_args.group_by_length=true --trainer.max_epochs="$EPOCHS"
    --trainer.log_every_n_steps=10 --trainer.logger.init_args.save_dir=runs --trainer.enable_progress_bar=false
)
start=$(date +%s)
stamp() { echo "[main_job +$(( $(date +%s) - start ))s] $*"; }

stamp "1/3 fine-tuning the teacher (packaged MiniLM-L6) on $TRAIN_SAMPLES SST-2 examples"
# The last callback of configs/finetune/glue.yaml is HFExport: its dirpath fixes where the teacher is exported.
"$PY" train.py fit --config configs/finetune/glue.yaml "${COMMON[@]}" \
    --model.init_args.lr="$TEACHER_LR" \
    --trainer.default_root_dir="$OUT/finetune" --trainer.logger.init_args.name=main_job-teacher \
    --trainer.callbacks.init_args.dirpath="$OUT/teacher"
[[ -d "$OUT/teacher/best" ]] || { echo "main_job: no teacher export in $OUT/teacher/best" >&2; exit 1; }

stamp "2/3 distilling the teacher into a 3-layer DistilBERT student"
"$PY" train.py fit --config configs/distill/glue.yaml "${COMMON[@]}" \
    --model.init_args.teacher="$OUT/teacher/best" --data.init_args.tokenizer="$OUT/teacher/best" \
    --model.init_args.lr="$STUDENT_LR" \
    --trainer.default_root_dir="$OUT/distill" --trainer.logger.init_args.name=main_job-student \
    --trainer.callbacks.init_args.dirpath="$OUT/student"
[[ -d "$OUT/student/best" ]] || { echo "main_job: no student export in $OUT/student/best" >&2; exit 1; }

stamp "3/3 comparing teacher and student"
"$PY" scripts/compare_models.py --teacher "$OUT/teacher/best" --student "$OUT/student/best" --task_name sst2 \
    --data_dir "$DATA_DIR" --max_seq_length "$MAX_SEQ_LENGTH" --output "$OUT/comparison.md"
stamp "done: $OUT/comparison.md; TensorBoard: .venv/bin/tensorboard --logdir runs"
