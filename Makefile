# Two entry points on a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tokenlm-installed
RECIPE ?= recipes/demo.yaml

.PHONY: setup demo-renderer demo pretrained test bench clean

setup: $(STAMP)

# torch: keep one that is already installed (a CUDA build on a GPU box); otherwise take the
# CPU build 2.13.0, never an unpinned torch (which pulls several GB of CUDA wheels).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,fast,ray,demo,report]"
	$(MAKE) --no-print-directory demo-renderer
	$(PY) -m pip check
	touch $(STAMP)

# tinysoundfont requires pyaudio (live playback only; no Linux wheel): installed without its
# dependencies, plus a metadata-only pyaudio placeholder so that `pip check` is clean (pyproject.toml).
demo-renderer:
	$(PY) -m pip install -q --disable-pip-version-check --no-deps tinysoundfont
	$(PY) -m pip install -q --disable-pip-version-check --no-deps ./packaging/pyaudio-placeholder

demo: setup
	$(VENV)/bin/tokenlm run $(RECIPE)

# A tiny pretrained folder (tokenizer K=64 + small LM on 6 min of the offline corpus): for trying
# the API and the formats, not for measuring anything (recipes/tiny.yaml says why).
pretrained: setup
	$(VENV)/bin/tokenlm run recipes/tiny.yaml
	$(VENV)/bin/tokenlm publish runs/tiny --out models/tokenlm-tiny

test: setup
	$(PY) -m pytest

bench: setup
	for script in scripts/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf runs data/demo data/tiny_corpus models/tokenlm-tiny .pytest_cache
