#!/usr/bin/env bash
# The larger-compute path's run on a lent GPU: a bundle made here by benchmarks/gpu_bundle.py (the recipe and its
# settings, the training codes and texts, the speech tokenizer, the base LLM in parts) checked by sha256, one LLM
# recipe trained for at most MINUTES (default 6: with the install, the LLM's conversion and the teacher's
# replies the call stays within its 600 s), and its adapter written to $OUT in files of at most 16 MB.
#
#   python benchmarks/gpu_bundle.py make --recipe distill --export … --tokenizer … [KEY=VALUE ...]   # prints the calls
#   run(command="bash benchmarks/gpu_train.sh", carry=[".whl", ".bundle/…"], timeout_s=600)          # the last call
#   python benchmarks/gpu_bundle.py join FILES_AT runs/gpu-distill                                    # here, after
#   bash benchmarks/gpu_train.sh --dry-run     # the same steps on this CPU (2 steps; .whl and .bundle needed)
#
# The wheels the GPU image lacks come from .whl/ (benchmarks/gpu_wheels.sh), installed as gpu_run.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[[ ${1:-} == --dry-run ]] && DRY_RUN=1
MINUTES=${MINUTES:-6}
BUNDLE=${BUNDLE:-.bundle}
WORK=$(mktemp -d /tmp/auralm-gpu-train.XXXXXX)
OUT_DIR=${OUT:-$WORK/out}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 AURALM_CACHE=$WORK/cache

if ((DRY_RUN)); then
    PY=.venv/bin/python
    EXTRA=(max_steps=2 device=cpu bf16=false)
else
    PY=${PYTHON:-python3}
    EXTRA=(device=cuda)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --editable .
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi

"$PY" benchmarks/gpu_bundle.py verify "$BUNDLE"
mapfile -t SETTINGS <"$BUNDLE/recipe.txt"
RECIPE=${SETTINGS[0]}
RUN=$WORK/run
mkdir -p "$RUN"
[[ -f $BUNDLE/teacher_replies.json ]] && cp "$BUNDLE/teacher_replies.json" "$RUN/"  # asked for once, here
[[ -d $BUNDLE/adapter ]] && SETTINGS+=("adapter=$BUNDLE/adapter")
started=$SECONDS
"$PY" -m auralm train "$RECIPE" "${SETTINGS[@]:1}" "train=$BUNDLE/export" "tokenizer=$BUNDLE/tokenizer" \
    "llm=$BUNDLE/llm.gguf" "whisper=$BUNDLE/whisper.pt" "output_dir=$RUN" progress=false "${EXTRA[@]}" --max-minutes "$MINUTES" \
    2>&1 | tee "$OUT_DIR/train.log"
echo "trained in $((SECONDS - started)) s"
"$PY" benchmarks/gpu_bundle.py pack-result "$RUN" "$OUT_DIR"
ls -l "$OUT_DIR"
