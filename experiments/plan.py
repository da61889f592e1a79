"""Every run behind RESULTS.md, as data: which config, which options, which seed, and what it depends on.

A run's `options` are dotted keys of its config (`trainer.max_steps`, `model.init_args.alpha_ce`,
`data.init_args.task_name`; `callbacks.<ClassName>.<arg>` for a callback's init_args), i.e. the `--key value`
options of `train.py`. A value "@<run id>" is the model (or tokenizer) that run produced, so a run's dependencies are
read off its options. The list is ordered for execution: every table at seed 1 first, then the other seeds, so a
partial run already gives every table at one seed.

Two sizes: `full` (about 4 hours of the 2-core CPU; the committed tables) and `quick` (tiny subsets and a few steps,
one seed: the CI check that the whole command still works).
"""
from __future__ import annotations

from dataclasses import dataclass, field

GLUE_TASKS = ("sst2", "mrpc", "cola", "stsb", "rte")
TEACHER = "packaged:all-minilm-l6-v2"
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)
ANNEALED = {"schedule": "linear", "t_start": 8.0, "t_end": 1.0}  # Hinton-style: soft early, sharp late
# Public DistilBERT-style map (first and last layer kept) and "every other from 0", for the 4-layer roberta_small.
LAYER_MAPS = {"spread": [0, 3], "every_other": [0, 2]}
# Blocks of 128 tokens in WikiText-2 train + SQuAD dev contexts with the 16k BPE tokenizer, FULL-SENTENCES (the
# number `data: built mlm-train: N rows` prints); the data-scale runs keep the first 25% and 50% of them.
CORPUS_BLOCKS = 21636


@dataclass(frozen=True)
class Run:
    """One training (`fit`), evaluation (`validate`), latency measurement or tokenizer training."""

    id: str  # the record's file name: <records>/<id>.json
    table: str  # which table of RESULTS.md reads it
    kind: str  # "fit" | "validate" | "latency" | "tokenizer" | "tiny_model"
    config: str | None  # base YAML under configs/ (fit and validate)
    options: dict = field(default_factory=dict)  # dotted keys -> values ("@<id>": that run's model)
    seed: int = 1
    labels: dict = field(default_factory=dict)  # what the tables group by (model, task, variant, ...)

    def needs(self) -> list[str]:
        """Ids of the runs whose outputs this run uses."""
        found = []

        def walk(value):
            if isinstance(value, str) and value.startswith("@"):
                found.append(value[1:])
            elif isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)

        walk(self.options)
        return found


@dataclass(frozen=True)
class Scale:
    """Sizes that differ between the full tables and the quick CI check."""

    seeds: tuple[int, ...]
    batch_size: int | None  # None: the configs' (32); quick: smaller batches
    glue_tasks: tuple[str, ...]
    sst2_train: int | None  # first N SST-2 training sentences (the other GLUE tasks: full train sets)
    glue_train: int | None  # None: full train sets
    glue_eval: int | None  # None: full dev sets
    glue_epochs: int
    sst2_epochs: int
    mlm_steps: int
    mlm_val_batches: int | float
    mlm_subset_blocks: int | None  # the masking/format ablation's corpus: first N blocks (None: all)
    corpus_blocks: int  # training blocks of the whole corpus (for the data-scale fractions)
    mlm_train_files: tuple[str, ...] | None  # None: the config's (WikiText-2 train + SQuAD dev contexts)
    mlm_eval_blocks: int | None  # perplexity over the first N validation blocks (None: all)
    distill_steps: int
    tokenizer_files: tuple[str, ...]
    vocab_size: int
    squad_train_articles: tuple[int, int]
    squad_eval_articles: tuple[int, int]
    squad_epochs: int
    squad_seeds: tuple[int, ...]
    squad_samples: int | None  # first N questions of each side (None: all of the articles)
    latency_rounds: int
    variants: int | None = None  # quick: the first N variants of each table (None: all)
    teacher: str = TEACHER  # the GLUE/SQuAD teacher; quick: "@tiny-teacher", a tiny random BERT (`tiny_model` run)
    mlm_size: tuple = ()  # quick: smaller roberta_small options ((key, value), ...), so the few steps take little


def first(items: dict, scale: Scale) -> dict:
    """The variants of a table that `scale` runs (all, or the first `scale.variants`)."""
    return dict(list(items.items())[:scale.variants]) if scale.variants else items


FULL = Scale(seeds=(1, 2, 3), batch_size=None, glue_tasks=GLUE_TASKS, sst2_train=16000, glue_train=None, glue_eval=None, glue_epochs=2, sst2_epochs=1,
             mlm_steps=400, mlm_val_batches=20, mlm_subset_blocks=480, corpus_blocks=CORPUS_BLOCKS, mlm_train_files=None, mlm_eval_blocks=None, distill_steps=400,
             tokenizer_files=("wikitext-2/train.txt",), vocab_size=16000, squad_train_articles=(0, 38),
             squad_eval_articles=(38, 48), squad_epochs=1, squad_seeds=(1,), squad_samples=None, latency_rounds=3)
QUICK = Scale(seeds=(1,), batch_size=8, glue_tasks=("sst2", "rte"), sst2_train=32, glue_train=32, glue_eval=32, glue_epochs=1, sst2_epochs=1,
              mlm_steps=3, mlm_val_batches=2, mlm_subset_blocks=32, corpus_blocks=64, mlm_train_files=("wikitext-2/test.txt",), mlm_eval_blocks=32, distill_steps=3,
              tokenizer_files=("wikitext-2/valid.txt",), vocab_size=1000, squad_train_articles=(0, 1),
              squad_eval_articles=(1, 2), squad_epochs=1, squad_seeds=(1,), squad_samples=32, latency_rounds=1,
              variants=3, teacher="@tiny-teacher",
              mlm_size=(("model.init_args.hidden_size", 64), ("model.init_args.num_attention_heads", 2),
                        ("model.init_args.intermediate_size", 128)))
# QUICK's teacher: the packaged teacher's tokenizer and family at a size whose runs take a second
TINY_TEACHER = {"like": TEACHER, "arch": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
                "intermediate_size": 64}


def glue_data(scale: Scale, task: str) -> dict:
    """Data options of a GLUE run: the task, its training subset and epochs."""
    train = scale.sst2_train if task == "sst2" else scale.glue_train
    return {"data.init_args.task_name": task, "data.init_args.max_train_samples": train,
            "data.init_args.max_eval_samples": scale.glue_eval,
            "trainer.max_epochs": scale.sst2_epochs if task == "sst2" else scale.glue_epochs}


def distilbert_table(scale: Scale, seed: int) -> list[Run]:
    """Table 1: teacher fine-tuned, student distilled, student on hard labels; dev-set latency of both models."""
    runs = []
    for task in scale.glue_tasks:
        teacher, student, hard = (f"t1-{task}-{who}-s{seed}" for who in ("teacher", "student", "hard"))
        data = glue_data(scale, task)
        lr = {"model.init_args.lr": 1e-4}
        runs.append(Run(teacher, "distilbert", "fit", "configs/finetune/glue.yaml",
                        {**data, **lr, "model.init_args.pretrained": scale.teacher,
                         "data.init_args.tokenizer": scale.teacher},
                        seed, {"model": "teacher", "task": task}))
        distil = {**data, "model.init_args.teacher": f"@{teacher}", "data.init_args.tokenizer": f"@{teacher}"}
        runs.append(Run(student, "distilbert", "fit", "configs/distill/glue.yaml", {**distil, **lr}, seed,
                        {"model": "student", "task": task}))
        runs.append(Run(hard, "distilbert", "fit", "configs/distill/glue.yaml",
                        {**distil, **lr, "model.init_args.alpha_ce": 0.0}, seed,
                        {"model": "student_hard", "task": task}))
        if seed == scale.seeds[0]:  # latency does not depend on the seed: measured on the first seed's models
            runs.append(Run(f"t1-{task}-latency", "distilbert", "latency", None,
                            {"task": task, "max_eval_samples": scale.glue_eval, "rounds": scale.latency_rounds,
                             "models": {"teacher": f"@{teacher}", "student": f"@{student}"}},
                            seed, {"task": task}))
    return runs


def temperature_table(scale: Scale, seed: int, task: str = "sst2") -> list[Run]:
    """Table 4: task distillation at T in TEMPERATURES and an annealed schedule (T = 2 is table 1's student)."""
    teacher = f"@t1-{task}-teacher-s{seed}"
    base = {**glue_data(scale, task), "model.init_args.lr": 1e-4, "model.init_args.teacher": teacher,
            "data.init_args.tokenizer": teacher}
    runs = []
    for t in first({t: t for t in TEMPERATURES if t != 2.0}, scale):  # T = 2: table 1's student run
        runs.append(Run(f"t4-{task}-T{t:g}-s{seed}", "temperature", "fit", "configs/distill/glue.yaml",
                        {**base, "model.init_args.temperature": t, "callbacks.TemperatureAnnealing.t_start": t,
                         "callbacks.TemperatureAnnealing.t_end": t}, seed, {"temperature": f"{t:g}", "task": task}))
    runs.append(Run(f"t4-{task}-annealed-s{seed}", "temperature", "fit", "configs/distill/glue.yaml",
                    {**base, **{f"callbacks.TemperatureAnnealing.{k}": v for k, v in ANNEALED.items()}}, seed,
                    {"temperature": f"linear {ANNEALED['t_start']:g} -> {ANNEALED['t_end']:g}", "task": task}))
    return runs


def after_pretraining(scale: Scale, model: str, prefix: str, seed: int, table: str, labels: dict) -> list[Run]:
    """WikiText-2 validation perplexity (whole set, fixed masks) and SST-2 after fine-tuning, of a pretrained model."""
    return [
        Run(f"{prefix}-ppl", table, "validate", "configs/mlm/roberta_small.yaml",
            {"model.init_args.pretrained": f"@{model}", "data.init_args.tokenizer": f"@{model}",
             "data.init_args.max_eval_samples": scale.mlm_eval_blocks, "trainer.limit_val_batches": 1.0},
            seed, {**labels, "model": model, "measure": "perplexity"}),
        glue_after_pretraining(scale, model, f"{prefix}-sst2", seed, table, labels, "sst2"),
    ]


def mlm_options(scale: Scale) -> dict:
    """Options of every roberta_small pretraining run: the budget's steps (no wall-clock cap), six validations."""
    every = scale.mlm_steps // 6 if scale.mlm_steps >= 60 else scale.mlm_steps  # six points on the curves
    options = {"data.init_args.tokenizer": "@tokenizer", "trainer.max_steps": scale.mlm_steps,
               "trainer.max_time": None, "trainer.limit_val_batches": scale.mlm_val_batches,
               "trainer.val_check_interval": every, **dict(scale.mlm_size)}
    if scale.mlm_train_files:
        options["data.init_args.train_files"] = list(scale.mlm_train_files)
    return options


def general_options(scale: Scale, teacher: str) -> dict:
    """Options of every general distillation of `teacher` (a run id) into the 2-layer student of layers [0, 3]."""
    options = {"model.init_args.teacher": f"@{teacher}", "data.init_args.tokenizer": "@tokenizer",
               "trainer.max_steps": scale.distill_steps, "trainer.max_time": None,
               "trainer.limit_val_batches": scale.mlm_val_batches,
               "model.init_args.student_layers": LAYER_MAPS["spread"]}
    if scale.mlm_train_files:
        options["data.init_args.train_files"] = list(scale.mlm_train_files)
    return options


def pretraining_tables(scale: Scale, seed: int) -> list[Run]:
    """Tables 2 and 3: roberta_small pretraining variants, and general distillation variants of its student."""
    mlm = mlm_options(scale)
    runs = []
    teacher = f"t2-teacher-s{seed}"  # dynamic masking, FULL-SENTENCES, the whole corpus: the distillation teacher
    runs.append(Run(teacher, "ablation", "fit", "configs/mlm/roberta_small.yaml", mlm, seed, {"variant": "teacher"}))
    runs += after_pretraining(scale, teacher, teacher, seed, "ablation", {"variant": "teacher"})
    subset = {**mlm, "data.init_args.max_train_samples": scale.mlm_subset_blocks}
    variants = {"dynamic, FULL-SENTENCES": {},
                "static x10, FULL-SENTENCES": {"data.init_args.masking": "static",
                                               "data.init_args.static_duplicates": 10},
                "dynamic, DOC-SENTENCES": {"data.init_args.packing": "doc_sentences"}}
    for i, (name, extra) in enumerate(first(variants, scale).items()):
        run = f"t3-v{i}-s{seed}"
        runs.append(Run(run, "roberta", "fit", "configs/mlm/roberta_small.yaml", {**subset, **extra}, seed,
                        {"variant": name}))
        runs += after_pretraining(scale, run, run, seed, "roberta", {"variant": name})
    general = general_options(scale, teacher)
    ablations = {"DistilBERT (L_ce + L_mlm + L_cos), layers [0, 3]": {},
                 "no L_ce": {"model.init_args.alpha_ce": 0.0},
                 "no L_cos": {"model.init_args.alpha_cos": 0.0},
                 "random initialisation": {"model.init_args.random_init": True},
                 "every other layer [0, 2]": {"model.init_args.student_layers": LAYER_MAPS["every_other"]}}
    for i, (name, extra) in enumerate(first(ablations, scale).items()):
        run = f"t2-a{i}-s{seed}"
        runs.append(Run(run, "ablation", "fit", "configs/distill/roberta_general.yaml", {**general, **extra}, seed,
                        {"variant": name}))
        runs += after_pretraining(scale, run, run, seed, "ablation", {"variant": name})
    return runs


def formats_table(scale: Scale, seed: int) -> list[Run]:
    """Table 6 (RoBERTa's table 2 and 4): input formats with and without NSP/SOP, and the data-scale finding.

    FULL-SENTENCES on the whole corpus at the budget's steps is table 2's teacher (the same run, seed 1); the others
    are trained here. Each model: perplexity on the same fixed validation masks, SST-2 and MRPC after fine-tuning.
    """
    mlm = mlm_options(scale)
    every = mlm["trainer.val_check_interval"]
    pair = {"data.init_args.packing": "segment_pair"}
    variants = {
        "FULL-SENTENCES": None,  # table 2's teacher
        "SEGMENT-PAIR + NSP": {**pair, "data.init_args.sentence_objective": "nsp",
                               "model.init_args.sentence_objective": "nsp"},
        "SEGMENT-PAIR + SOP": {**pair, "data.init_args.sentence_objective": "sop",
                               "model.init_args.sentence_objective": "sop"},
        "DOC-SENTENCES": {"data.init_args.packing": "doc_sentences"},
        "25% of the corpus": {"data.init_args.max_train_samples": scale.corpus_blocks // 4},
        "50% of the corpus": {"data.init_args.max_train_samples": scale.corpus_blocks // 2},
        "100% of the corpus, 2x steps": {"trainer.max_steps": 2 * scale.mlm_steps,
                                         "trainer.val_check_interval": 2 * every},
    }
    runs = []
    for i, (name, extra) in enumerate(first(variants, scale).items()):
        labels = {"variant": name, "group": "data scale" if "corpus" in name else "format"}
        if extra is None:
            model = f"t2-teacher-s{seed}"
            if seed != scale.seeds[0]:  # table 2 has one seed: the other seeds' FULL-SENTENCES runs are trained here
                runs.append(Run(model, "formats", "fit", "configs/mlm/roberta_small.yaml", mlm, seed, labels))
        else:
            model = f"t6-v{i}-s{seed}"
            runs.append(Run(model, "formats", "fit", "configs/mlm/roberta_small.yaml", {**mlm, **extra}, seed, labels))
        if extra is not None or seed != scale.seeds[0]:  # table 2 scores its teacher itself
            runs += after_pretraining(scale, model, model, seed, "formats", labels)
        runs.append(glue_after_pretraining(scale, model, f"{model}-mrpc", seed, "formats", labels, "mrpc"))
    return runs


OBJECTIVES = {  # general-distillation objectives compared in table 7 (issue 14), same student, same steps
    "DistilBERT (5 L_ce + 2 L_mlm + 1 L_cos)": {},
    "TinyBERT (hidden MSE + attention-score MSE)": {
        "model.init_args.alpha_ce": 0.0, "model.init_args.alpha_mlm": 0.0, "model.init_args.alpha_cos": 0.0,
        "model.init_args.temperature": 1.0, "callbacks.TemperatureAnnealing.t_start": 1.0,
        "callbacks.TemperatureAnnealing.t_end": 1.0,
        "model.init_args.layerwise": {"hidden_mse": 1.0, "attention_mse": 1.0}},
    "MiniLMv2 (q-q, k-k, v-v relation KL, 8 relation heads)": {
        "model.init_args.alpha_ce": 0.0, "model.init_args.alpha_mlm": 0.0, "model.init_args.alpha_cos": 0.0,
        "model.init_args.temperature": 1.0, "callbacks.TemperatureAnnealing.t_start": 1.0,
        "callbacks.TemperatureAnnealing.t_end": 1.0,
        "model.init_args.layerwise": {"qkv_relation_kl": 1.0}, "model.init_args.relation_heads": 8},
}


def objectives_table(scale: Scale, seed: int) -> list[Run]:
    """Table 7 (issue 14): the same 2-layer student of table 2's teacher (layers [0, 3]) distilled for the same steps
    with DistilBERT's, TinyBERT's and MiniLMv2's objectives; scored by perplexity and by SST-2 after task
    distillation from the teacher fine-tuned on SST-2 (table 2's `t2-teacher-s1-sst2`)."""
    sst2_teacher = "@t2-teacher-s1-sst2"
    general = general_options(scale, "t2-teacher-s1")
    runs = []
    for i, (name, extra) in enumerate(first(OBJECTIVES, scale).items()):
        labels = {"variant": name}
        model = f"t2-a0-s{seed}" if i == 0 and seed == scale.seeds[0] else f"t7-o{i}-s{seed}"
        if model != f"t2-a0-s{seed}":
            runs.append(Run(model, "objectives", "fit", "configs/distill/roberta_general.yaml", {**general, **extra},
                            seed, labels))
            runs.append(after_pretraining(scale, model, model, seed, "objectives", labels)[0])  # perplexity
        runs.append(Run(f"{model}-task-sst2", "objectives", "fit", "configs/distill/glue.yaml",
                        {**glue_data(scale, "sst2"), "model.init_args.teacher": sst2_teacher,
                         "model.init_args.student": f"@{model}", "model.init_args.lr": 1e-4,
                         "data.init_args.tokenizer": sst2_teacher}, seed,
                        {**labels, "model": model, "measure": "task-sst2"}))
    return runs


def glue_after_pretraining(scale: Scale, model: str, run_id: str, seed: int, table: str, labels: dict,
                           task: str) -> Run:
    """`model` fine-tuned on a GLUE task (its dev score after the last epoch)."""
    return Run(run_id, table, "fit", "configs/finetune/glue.yaml",
               {**glue_data(scale, task), "model.init_args.pretrained": f"@{model}", "model.init_args.lr": 1e-4,
                "data.init_args.tokenizer": f"@{model}"}, seed, {**labels, "model": model, "measure": task})


def squad_table(scale: Scale, seed: int) -> list[Run]:
    """Table 5: SQuAD v1.1 teacher and student, trained on dev articles [a, b), evaluated on [c, d)."""
    data = {"data.init_args.train_articles": list(scale.squad_train_articles),
            "data.init_args.eval_articles": list(scale.squad_eval_articles), "trainer.max_epochs": scale.squad_epochs,
            "data.init_args.max_train_samples": scale.squad_samples, "data.init_args.max_eval_samples": scale.squad_samples}
    teacher = f"t5-teacher-s{seed}"
    return [
        Run(teacher, "squad", "fit", "configs/finetune/squad.yaml",
            {**data, "model.init_args.pretrained": scale.teacher, "data.init_args.tokenizer": scale.teacher}, seed,
            {"model": "teacher"}),
        Run(f"t5-student-s{seed}", "squad", "fit", "configs/distill/squad.yaml",
            {**data, "model.init_args.teacher": f"@{teacher}", "data.init_args.tokenizer": f"@{teacher}"}, seed,
            {"model": "student"}),
    ]


def with_batch_size(run: Run, batch_size: int | None) -> Run:
    """`run` with smaller batches (training and evaluation) when the scale says so."""
    if batch_size is None or run.kind not in ("fit", "validate"):
        return run
    sizes = {"data.init_args.batch_size": batch_size, "data.init_args.eval_batch_size": 2 * batch_size}
    return Run(run.id, run.table, run.kind, run.config, {**run.options, **sizes}, run.seed, run.labels)


def plan(scale: Scale) -> list[Run]:
    """All runs in execution order (every table at the first seed, then the other seeds, SQuAD last)."""
    runs = [Run("tokenizer", "setup", "tokenizer", None,
                {"files": list(scale.tokenizer_files), "vocab_size": scale.vocab_size})]
    if scale.teacher.startswith("@"):
        runs.append(Run(scale.teacher[1:], "setup", "tiny_model", None, TINY_TEACHER))
    for seed in scale.seeds:
        runs += distilbert_table(scale, seed) + temperature_table(scale, seed)
        if seed == scale.seeds[0]:
            runs += pretraining_tables(scale, seed)  # one seed: the budget (see RESULTS.md)
        runs += formats_table(scale, seed) + objectives_table(scale, seed)
    for seed in scale.squad_seeds:
        runs += squad_table(scale, seed)
    runs = [with_batch_size(run, scale.batch_size) for run in runs]
    ids = [r.id for r in runs]
    assert len(ids) == len(set(ids)), "run ids must be unique"
    return runs
