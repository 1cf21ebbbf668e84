#!/usr/bin/env bash
# One GPU session's whole check of auralm, in one command of at most DEADLINE seconds (default 420):
# install from the carried wheels, `pytest -m gpu`, benchmarks/kernels.py, the tokenizer throughput
# benchmark, the latency benchmark (default shape with the dynamic then the static KV cache, 8 conversations in one
# batch and in turn, then --shape ichigo)
# and the dataset export benchmark (a Whisper-medium shape), all on CUDA. Each step runs under `timeout`, cut
# short to what is left before the deadline, so one hang cannot eat the rest; a step with under 10 s left is
# skipped.
# Everything goes to $OUT/gpu_run.log (pytest's report to $OUT/pytest.xml); a dated section headed with
# the device name is appended to benchmarks/RESULTS.md and, since the tree does not come back, copied to
# $OUT/results_section.md: paste it into RESULTS.md.
#
# Before, here (no GPU needed):
#   bash benchmarks/gpu_wheels.sh          # .whl/: the wheels the GPU image lacks + the models' shapes
#   bash benchmarks/gpu_run.sh --dry-run   # the same steps on CPU at tiny sizes (DRY_RUN=1 works too);
#                                          # the section goes to a temporary copy of RESULTS.md
# Then the device tool's call (a machine start costs 1-2 of the session's 15 minutes):
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=480)
# To redo some steps in what is left (the install steps always run; names as in the section's table):
#   run(command="DEADLINE=200 ONLY=kernels,latency-ichigo bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=240)
#
# Weights: the packaged ones do not fit the 64 MiB the tool sends, so gpu_run.py builds random weights
# in their shapes (Whisper tiny.en, SmolLM2-135M with its real tokenizer); the section says so.
set -u
cd "$(dirname "$0")/.." || exit

DRY_RUN=${DRY_RUN:-0}
[[ ${1:-} == --dry-run ]] && DRY_RUN=1
DEADLINE=${DEADLINE:-420}
RESERVE=20  # seconds kept for timeout's kill grace and the section
WORK=$(mktemp -d /tmp/auralm-gpu-run.XXXXXX)
OUT_DIR=${OUT:-$WORK/out}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_run.log
STEPS=$WORK/steps.tsv
MODELS=$WORK/models
: >"$STEPS"
# No network there: nothing may wait on a model hub. No progress bars in the logs.
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}

step() {  # step NAME BOX COMMAND...: COMMAND under `timeout`, BOX seconds at most and never past the deadline
    local name=$1 box=$2 began=$SECONDS rc status
    shift 2
    local left=$((DEADLINE - RESERVE - SECONDS))
    ((box > left)) && box=$left
    printf '\n===== %s (at most %s s): %s\n' "$name" "$box" "$*" | tee -a "$LOG"
    if [[ -n ${ONLY:-} && ,$ONLY,install-wheels,install-auralm,check-env,random-models, != *,$name,* ]]; then
        status="skipped: not in ONLY"
    elif ((box < 10)); then
        status="skipped: no time left"
    else
        timeout -k 5 "$box" "$@" 2>&1 | tee -a "$WORK/$name.log" "$LOG"
        rc=${PIPESTATUS[0]}
        case $rc in
        0) status=ok ;;
        124 | 137) status="timed out at $box s" ;;
        *) status="failed, exit $rc" ;;
        esac
    fi
    printf '===== %s: %s, %s s\n' "$name" "$status" "$((SECONDS - began))" | tee -a "$LOG"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" "${*//$WORK/\$WORK}" "$WORK/$name.log" >>"$STEPS"
}

if [[ ! -f .whl/stub/whisper-tiny.en.json ]]; then
    echo "gpu_run.sh: no .whl/ here: run benchmarks/gpu_wheels.sh first, and name .whl in the device call's carry" >&2
    exit 2
fi
if ((DRY_RUN)); then
    # The GPU image's Python, rehearsed: a fresh venv that sees the development .venv's packages through a
    # plain path (so not the .venv's own editable auralm), the carried wheels before them on PYTHONPATH.
    python3 -m venv --without-pip "$WORK/venv"
    .venv/bin/python -c 'import site; print(site.getsitepackages()[0])' \
        >"$("$WORK/venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')/dev-venv.pth"
    PY=$WORK/venv/bin/python
    DEVICE=cpu
    RESULTS=$WORK/RESULTS.md
    cp benchmarks/RESULTS.md "$RESULTS"
    # Tags of the GPU's Python for the wheels; the .venv's setuptools (65) cannot build auralm itself, so
    # pip fetches a newer one into an isolated build, which the GPU machine (no network) cannot.
    WHEEL_TAGS=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    BUILD=()
    KERNELS_SIZES=(--codebook-sizes 513 --repeats 2)
    TOKENIZER_SIZES=(--clips 2 --batch-sizes "1,2")
    EXPORT_SIZES=(--files 4 --batch-size 4 --num-workers 1)
    LATENCY_SIZES=(--new-tokens 4 --repeats 1)
else
    PY=${PYTHON:-python3}
    DEVICE=cuda
    RESULTS=benchmarks/RESULTS.md
    WHEEL_TAGS=()
    BUILD=(--no-build-isolation --no-index)
    KERNELS_SIZES=() TOKENIZER_SIZES=() LATENCY_SIZES=()  # each script's defaults
    EXPORT_SIZES=(--files 1000 --batch-size 64 --num-workers 8)  # the issue's goal: ≥ 1000× real time, medium shape
fi

{
    echo "gpu_run.sh $(date -u +%FT%TZ), dry run: $DRY_RUN, deadline $DEADLINE s, work folder $WORK"
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} 2>&1 | tee -a "$LOG"

step install-wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "${WHEEL_TAGS[@]}" .whl/*.whl
# Editable, into the environment's own site-packages: setup.py maps the top-level folders into auralm.*,
# and only the editable finder makes `auralm.kernels` importable while pytest puts the repository root
# (with its bare auralm/ folder) first on sys.path.
step install-auralm 90 "$PY" -m pip install -q --no-deps "${BUILD[@]}" --editable .
step check-env 60 "$PY" benchmarks/gpu_run.py check-env .whl
step random-models 90 "$PY" benchmarks/gpu_run.py random-models .whl/stub "$MODELS"

# Only the files holding gpu tests: others import packages the image lacks (ctranslate2, openai).
mapfile -t GPU_TESTS < <(grep -rl --include='test_*.py' 'mark\.gpu' tests | sort)
XDIST=()
"$PY" -c 'import xdist' 2>/dev/null && [[ $DEVICE == cuda ]] && XDIST=(-n 8)
# Parallel workers time the autotuner's candidates against each other: keep their picks apart from the benchmarks'.
# -p no:benchmark: the image's pytest-benchmark warns once per xdist worker that it is off.
step gpu-tests 150 env TRITON_CACHE_DIR="$WORK/triton-tests" "$PY" -m pytest -m gpu -q -p no:benchmark "${XDIST[@]}" \
    --junitxml="$OUT_DIR/pytest.xml" "${GPU_TESTS[@]}"
step kernels 150 "$PY" benchmarks/kernels.py --device "$DEVICE" "${KERNELS_SIZES[@]}"
step tokenizer 90 "$PY" benchmarks/tokenizer_throughput.py --device "$DEVICE" \
    --whisper "$MODELS/whisper-tiny.en-random.pt" "${TOKENIZER_SIZES[@]}"
step latency 90 "$PY" benchmarks/latency.py --device "$DEVICE" --llm "$MODELS/smollm2-135m-random" \
    --whisper "$MODELS/whisper-tiny.en-random.pt" --concurrent 8 "${LATENCY_SIZES[@]}"
step latency-static 120 "$PY" benchmarks/latency.py --device "$DEVICE" --llm "$MODELS/smollm2-135m-random" \
    --whisper "$MODELS/whisper-tiny.en-random.pt" --static-cache "${LATENCY_SIZES[@]}"
if ((DRY_RUN)); then  # an 8B model in float32 is 32 GB: more than this machine has
    printf 'latency-ichigo\tskipped: dry run\t0\tbenchmarks/latency.py --shape ichigo\t-\n' >>"$STEPS"
else
    step latency-ichigo 240 "$PY" benchmarks/latency.py --shape ichigo --device "$DEVICE" \
        --llm "$MODELS/smollm2-135m-random"
fi
# last, in what time is left; jsonl: the image has no pyarrow, and the codes are the same
step export 120 "$PY" benchmarks/export.py --device "$DEVICE" --shape medium --format jsonl "${EXPORT_SIZES[@]}"

if [[ $DEVICE == cuda ]]; then
    NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
    NAME=${NAME:-$("$PY" -c 'import torch; print(torch.cuda.get_device_name())' 2>/dev/null)}
    DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
    ENV="driver ${DRIVER:-?}"
else
    NAME="CPU $(uname -m), dry run of the GPU steps at tiny sizes"
    ENV="no GPU"
fi
ENV="$ENV, $("$PY" -c 'import platform, torch, triton, transformers as t; print(f"Python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, transformers {t.__version__}")' 2>/dev/null)"
ENV="$ENV, tree $(git describe --always --dirty 2>/dev/null || echo 'not a git checkout'); $((SECONDS)) s in all"
"$PY" benchmarks/gpu_run.py section "$STEPS" --device "${NAME:-unknown device}" --env "$ENV" \
    --results "$RESULTS" --copy "$OUT_DIR/results_section.md" >>"$LOG"
echo
echo "section appended to $RESULTS and copied to $OUT_DIR/results_section.md; log: $LOG"
echo "step results (name, status, seconds):"
awk -F'\t' '{ printf "  %-16s %-32s %5s\n", $1, $2, $3 }' "$STEPS"
