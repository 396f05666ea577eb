#!/usr/bin/env bash
# Every GPU measurement of the paper's setting in one run of about 8 minutes on an H200 (its step limits add to 13.7), its
# results in one folder (11 files: a remote runner that returns fewer can take a tar of it), then the NR BLER tails
# that the CPUs here cannot reach (cut by their limit, they keep what they measured).
#
#   bash bench/gpu.sh prepare           # here (with the project installed): the tokenizer, the text and the
#                                       # wheels a GPU machine without this project's packages needs, in .gpu/
#   bash bench/gpu.sh run [OUT]         # there, from the repository root with .gpu/ beside it: OUT (default
#                                       # results/gpu) gets one .txt per step, a profile and summary.json
# .gpu/ is git-ignored: send it with the working tree (rsync, or a remote runner's list of extra paths).
#
# No weights travel: the models are random-weight stand-ins of the published shapes (--model random:SHAPE),
# built on the GPU with the embedded tokenizer. Each step has its own time limit, so a slow step costs
# its own figure, not the others'. Settings below can be overridden from the environment.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}                     # the Python with torch (CUDA) on the GPU machine
DEVICE=${DEVICE:-cuda}                # where everything runs (cpu: a rehearsal of this script, tiny shapes)
DTYPE=${DTYPE:-bfloat16}              # the dtype of the models and of the matmul peak
MODEL=${MODEL:-random:llama-2-7b}     # the paper's model's shape
MODEL_LARGE=${MODEL_LARGE-random:llama-2-13b}  # the paper's other shape ("" to skip)
TOKENS=${TOKENS:-2048}                # tokens of text per sweep window
DRAWS=${DRAWS:-5}                     # the paper's draws per cell
TOKENS_LONG=${TOKENS_LONG:-4096}      # the last step's windows: Llama-2's whole context
DRAWS_LONG=${DRAWS_LONG:-8}           # the last step's draws per cell
NEW_TOKENS=${NEW_TOKENS:-64}          # greedy tokens per request in the decoding benchmark
DECODE=${DECODE:-compiled}            # serve.py's decoding: eager, static, compiled
LIMIT_SCALE=${LIMIT_SCALE:-1}         # multiplies every step's time limit (a rehearsal on a CPU needs more)
PREP=${PREP:-.gpu}                    # what `prepare` writes and `run` reads
FETCH_WHEELS=${FETCH_WHEELS:-1}       # prepare: download the wheels below (0: use the GPU machine's versions)
TAILS=${TAILS-reliable}               # the NR BLER points measured deeper (nr --points; "" to skip): the reliable rule's
TAIL_SLOTS=${TAIL_SLOTS:-}            # slots per tail point ("": the count that certifies the residual target, 36,887)
TAIL_BATCH=${TAIL_BATCH:-512}         # slots per Sionna call there
WHEELS=("transformers==5.24.0" "tokenizers==0.23.3")  # the pins a stock torch image may lack (not torch: its CUDA build is there)
# and, for the tails, Sionna with what it imports that such an image may lack (matplotlib and its own; 26 MB)
TAIL_WHEELS=("sionna-no-rt==2.2.0" "importlib-resources==7.1.0" "matplotlib==3.11.2" "contourpy==1.3.3" "cycler==0.12.1"
             "fonttools==4.69.1" "kiwisolver==1.5.1" "pillow==13.0.0" "pyparsing==3.3.3" "python-dateutil==4.0.0")
[ -n "$TAILS" ] && WHEELS+=("${TAIL_WHEELS[@]}")

prepare() {
    mkdir -p "$PREP/tokenizer" "$PREP/wheels"
    "${PY_HERE:-python}" - "$PREP" <<'EOF'
import shutil, sys
from pathlib import Path
from layersplit.data import load_text
from layersplit.models import embedded_folder
out = Path(sys.argv[1])
for f in embedded_folder().iterdir():
    if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
        shutil.copy(f, out / "tokenizer" / f.name)
(out / "wiki_test.txt").write_text(load_text("wiki"), encoding="utf-8")
EOF
    [ "$FETCH_WHEELS" = 1 ] && "${PY_HERE:-python}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$PREP/wheels" "${WHEELS[@]}" || echo "wheels not fetched: the GPU machine's own versions will be used"
    true
    du -sh "$PREP"
}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to OUT/NAME.txt and the terminal
    local name=$1 seconds=$2
    shift 2
    echo "== $name (limit $((seconds * LIMIT_SCALE)) s): $*" | tee "$OUT/$name.txt"
    local start=$SECONDS
    timeout $((seconds * LIMIT_SCALE)) "$@" 2>&1 | tee -a "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

run() {
    OUT=${1:-results/gpu}
    mkdir -p "$OUT"
    export PYTHONUNBUFFERED=1 LAYERSPLIT_TOKENIZER=$PREP/tokenizer
    # the project from this folder: a GPU machine has its copy here, not installed
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    if ls "$PREP"/wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/layersplit-site \
            "$PREP"/wheels/*.whl && export PYTHONPATH=/tmp/layersplit-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    local text=$PREP/wiki_test.txt
    { date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"
      "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
    } >"$OUT/machine.txt" 2>&1
    # correctness on the device first (-v: a test cut off by the limit still shows which passed): device masks,
    # fast = naive, compiled layers = naive, host syncs, decoding tokens
    step tests 90 "$PY" -m pytest -v -m gpu -p no:cacheprovider tests/test_gpu_path.py tests/test_decode.py
    # the paper's grid on the 7B shape: splits 1..9 x (clean + 8 p x 5 draws), 2,048 tokens, eager then with
    # the edge's layers compiled (the lever if eager misses 60% of the peak), with a profile of the eager path
    step sweep_paper 180 "$PY" bench/sweep.py --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --dataset "$text" \
        --tokens "$TOKENS" --draws "$DRAWS" --grids paper --naive none --compiled --profile "$OUT/sweep_profile.txt"
    # fast = naive on the device (1 draw keeps the naive path short), and every layer
    step sweep_check 70 "$PY" bench/sweep.py --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --dataset "$text" \
        --tokens "$TOKENS" --draws 1 --grids paper,layers --naive paper
    # decoding: single process against the socket path, TTFT and TPOT against the memory bound (compiling
    # the 7B steps takes a while: one graph per segment and cache length)
    step serve 180 "$PY" bench/decoding.py --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --decode "$DECODE" \
        --prompts 2 --max-new-tokens "$NEW_TOKENS" --rounds 2 --wires bf16,fp16 --threads 0
    if [ -n "$MODEL_LARGE" ]; then
        step sweep_paper_large 60 "$PY" bench/sweep.py --model "$MODEL_LARGE" --device "$DEVICE" --dtype "$DTYPE" \
            --dataset "$text" --tokens "$TOKENS" --draws "$DRAWS" --grids paper --naive none
    fi
    # last of the paper's figures, so that a run cut by an outer time limit loses only this (and the tails): the
    # paper grid in windows of Llama-2's
    # whole context and 8 draws per cell (attention costs more per token than at 2,048)
    step sweep_paper_long 100 "$PY" bench/sweep.py --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
        --dataset "$text" --tokens "$TOKENS_LONG" --draws "$DRAWS_LONG" --grids paper --naive none
    # the NR BLER tails where the reliable rule's bound is read (nr_sim.reliable_points), continuing the committed
    # file: each point to the slots that certify RESIDUAL_TARGET, a row per 2,048 slots as they are done, so a run
    # cut by its limit keeps what it measured and the next resumes (commit OUT/nr_bler_tails.csv as results/'s)
    if [ -n "$TAILS" ]; then
        cp results/nr_bler_tails.csv "$OUT/nr_bler_tails.csv"
        step nr_tails 120 "$PY" -m layersplit.nr --tails "$OUT/nr_bler_tails.csv" --points "$TAILS" --device "$DEVICE" \
            --batch "$TAIL_BATCH" ${TAIL_SLOTS:+--max-slots "$TAIL_SLOTS"}
    fi
    "$PY" bench/gpu_summary.py "$OUT"  # the figures of every step in OUT/summary.json (the README's GPU table)
    ls -la "$OUT"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash bench/gpu.sh prepare | run [OUT]" >&2; exit 2 ;;
esac
