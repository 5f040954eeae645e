# Two commands do all the set-up: `make sweep` (the default sweep, end to end) and `make test`.
# Both create .venv on first use and install the suite into it.
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, pin torch to a CPU build (on this project's CI machines torch 2.13.0 is one);
# with nvidia-smi present the ordinary (CUDA) build of the project's range is taken.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.4' || echo 'torch==2.13.0')
# The accelerator whose DeepSpeed ops install builds ahead (python -m suite.prebuild), so that the
# first run does not pay for the build inside its measured wall time.
ACCELERATOR ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: sweep test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e '.[test]'
	$(PY) -m suite.prebuild $(ACCELERATOR)
	touch $@

sweep: install
	$(PY) -m suite.sweep -m $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results/*/
