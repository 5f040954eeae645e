# Two commands do all the set-up: `make sweep` (the default sweep, end to end) and `make test`.
# Both create .venv on first use and install the suite into it.
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, pin torch to 2.13.0: a CPU build where the pip index serves one (this project's
# CI machines), else PyPI's default build; TORCH_INDEX='--index-url https://download.pytorch.org/whl/cpu'
# takes PyTorch's own CPU build anywhere. With nvidia-smi present the ordinary (CUDA) build of
# pyproject.toml's range is taken.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.5' || echo 'torch==2.13.0')
TORCH_INDEX ?=
# The accelerator whose DeepSpeed ops install builds ahead (python -m suite.prebuild), so that the
# first run does not pay for the build inside its measured wall time.
ACCELERATOR ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: sweep test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(VENV)/bin/pip install -q -e '.[test]'
	$(PY) -m suite.prebuild $(ACCELERATOR)
	touch $@

sweep: install
	$(PY) -m suite.sweep -m $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results/*/
