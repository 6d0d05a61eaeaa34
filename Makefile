# Two entry points (see README): `make demo` and `make test`.
# Each creates .venv if needed, installs replaytune with its pinned dependency set, then runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	# torch pinned in the same pip command: a range alone would pull a CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0 -e '.[test,trl,tensorboard,wandb,mlflow,eval,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/replaytune demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-out
