#!/usr/bin/env bash
# Issue 24's retraining on this 2-core CPU, stage by stage, as RESULTS.md reports it: every stage resumes where
# a kill or its time limit left it, so a session that finds a fresh machine makes the state again with the same
# commands (the data is deterministic from its seed; runs/ and data/ are never committed).
#
#   bash benchmarks/retrain_cpu.sh data                  # the broad data set (HOURS, default 106; 36 suffice up
#                                                        # to pretrain), then its train-24k/-4k/-rest subsets
#   MINUTES=60 bash benchmarks/retrain_cpu.sh tokenizer  # fine-tune the shipped tokenizer on train-24k; at its
#                                                        # last step, its float16 copy in runs/candidate
#   MINUTES=60 bash benchmarks/retrain_cpu.sh pretrain   # the shipped adapter on the candidate's codes, train-24k
#   MINUTES=60 bash benchmarks/retrain_cpu.sh pretrain-more   # then on train-rest (HOURS=106: 48,000 clips it
#                                                        # has not seen; their codes are encoded once, then cached)
#   MINUTES=60 bash benchmarks/retrain_cpu.sh sft ADAPTER     # instruction tuning from ADAPTER on the data's chat
#                                                        # manifest: transcription, spoken questions (each reply
#                                                        # led by what was heard: heard_first), noise
#   MINUTES=60 bash benchmarks/retrain_cpu.sh distill ADAPTER # distillation with noise on train-4k from ADAPTER
#   MINUTES=60 bash benchmarks/retrain_cpu.sh ab wide|wide-heads|wide-rank|lora   # widen_dims (without a new
#                                                        # key/value head, with one, with one trained as rank-32
#                                                        # products) against LoRA, all from scratch: 120 steps on the
#                                                        # first 4,434 training clips (RESULTS.md, 2026-12-06)
#   MINUTES=60 bash benchmarks/retrain_cpu.sh wide   # the widened LLM sized to the package (72 dims, 32 neurons,
#                                                        # a new head trained as rank-32 products: 6.0 M parameters,
#                                                        # 12 MB in float16) pretrained from scratch, one epoch over
#                                                        # the first 17,588 training clips (21.7 h) into runs/wide-1
#   MINUTES=60 bash benchmarks/retrain_cpu.sh wide output_dir=runs/wide-1-ctc ctc_weight=0.3   # the same with
#                                                        # letter CTC beside the transcript (RESULTS.md, 2026-12-07)
#   MINUTES=60 bash benchmarks/retrain_cpu.sh wide-more  # then one epoch over the next 7,950 (lines 17,589-25,538:
#                                                        # 9.9 h it has not heard) into runs/wide-2; FROM=runs/wide-2
#                                                        # TO=runs/wide-3 LINES=25539,34916 … goes on over the next
#                                                        # ones (max_steps=: their rows / 8)
#   FROM=runs/wide-1-ctc TO=runs/wide-2-ctc MINUTES=60 bash benchmarks/retrain_cpu.sh wide-more ctc_weight=0.3
#                                                        # the same with letter CTC, its head carried on from the
#                                                        # adapter's letter_ctc.safetensors (RESULTS.md, 2026-12-07)
#   FROM=runs/wide-2-ctc-lr2e-3 TO=runs/wide-long LINES=17589,37357 MINUTES=60 bash benchmarks/retrain_cpu.sh \
#       wide-more ctc_weight=0.3 lr=2e-3 warmup_steps=20 max_steps=1500   # a long schedule at a high learning rate
#                                                        # over 19,769 clips (RESULTS.md, 2026-12-07, wide-long)
#   FROM=runs/wide-long TO=runs/wide-long-2 LINES=37358,72123 MINUTES=60 bash benchmarks/retrain_cpu.sh \
#       wide-more ctc_weight=0.3 lr=1e-3 warmup_steps=20 max_steps=1450   # then one epoch over the rest of the
#                                                        # training split: 34,766 clips (42.8 h) none has heard
#   MINUTES=60 bash benchmarks/retrain_cpu.sh wide-all   # the widened LLM from scratch in one pass over the whole
#                                                        # training split (72,123 clips, 89 h: ~3,000 steps), the
#                                                        # learning rate held at its peak (warmup-stable-decay), so
#                                                        # the run goes on across sessions into runs/wide-all
#   COOL=150 bash benchmarks/retrain_cpu.sh wide-all-cool   # a finished model of wide-all as it stands: a copy of
#                                                        # its latest checkpoint resumed with the end COOL steps on
#                                                        # (the rate falls linearly to a tenth) into
#                                                        # runs/wide-all-cool-STEP; wide-all goes on unchanged
#   (the sft stages below default to adapters of the runs before 2026-12-07's restart, lost with their machine:
#   give adapter= of the restart's run)
#   MINUTES=60 bash benchmarks/retrain_cpu.sh sft-wide   # sft of the widened LLM from wide's adapter (heard_first,
#                                                        # lr 5e-4 cosine over 360 steps)
#   MINUTES=60 bash benchmarks/retrain_cpu.sh sft-hear   # sft of wide-v4 with the base LLM's own replies to the
#                                                        # spoken questions typed, on the first 8,000 conversations
#   MINUTES=60 bash benchmarks/retrain_cpu.sh sft-noise  # wide-v4 taught to refuse noise only (transcription
#                                                        # requests and noise, lr 2e-4, 120 steps)
#   MINUTES=60 bash benchmarks/retrain_cpu.sh sft-qa     # sft-noise-2 taught spoken questions again (heard_first,
#                                                        # manifest replies, as many transcription requests)
#   bash benchmarks/retrain_cpu.sh eval RUN              # RUN/adapter on the first 60 validation clips
#
# MINUTES bounds one call (default: no bound); the same call again goes on where it stopped. Recipe keys after the
# stage override its settings, e.g. `pretrain lora_quiet=0.25 output_dir=runs/pretrain-quiet` for an A/B run.
set -euo pipefail
cd "$(dirname "$0")/.."

AURALM=.venv/bin/auralm
DATA=data/speech-v2
CANDIDATE=${CANDIDATE:-runs/candidate/speech-tokenizer}  # the shipped tokenizer is its float16 copy
LIMIT=()
[[ -n ${MINUTES:-} ]] && LIMIT=(--max-minutes "$MINUTES")

case ${1:-} in
data)
    "$AURALM" data synth --out "$DATA" --hours "${HOURS:-106}" --seed 0 --workers 2
    head -n 24000 "$DATA/train.jsonl" >"$DATA/train-24k.jsonl"  # tokenizer and first pretraining
    awk 'NR % 6 == 1' "$DATA/train-24k.jsonl" >"$DATA/train-4k.jsonl"  # distillation (teacher replies cost)
    tail -n +24001 "$DATA/train.jsonl" >"$DATA/train-rest.jsonl"  # pretraining on clips not yet seen
    wc -l "$DATA"/train*.jsonl
    ;;
tokenizer)
    "$AURALM" train tokenizer --config tokenizer train="$DATA/train-24k.jsonl" val="$DATA/val.jsonl" \
        output_dir=runs/tokenizer-v2 init=checkpoints/shipped/speech-tokenizer depth=2 lr=5e-4 max_steps=1250 \
        eval_every=250 val_examples=48 save_every=50 save_every_minutes=5 --threads 2 --resume "${LIMIT[@]}"
    if grep -q '"step": 1250,' runs/tokenizer-v2/metrics.jsonl; then
        .venv/bin/python -c "from pathlib import Path; from auralm.apps.shipping import ship_tokenizer
print(ship_tokenizer('runs/tokenizer-v2/tokenizer', into=Path('$(dirname $CANDIDATE)')))"
    fi
    ;;
pretrain)
    "$AURALM" train pretrain --config pretrain tokenizer="$CANDIDATE" train="$DATA/train-24k.jsonl" \
        frames_cache=runs/tokenizer-v2/features output_dir=runs/pretrain-v2 adapter=checkpoints/shipped/speech-smollm2 \
        allow_mismatch=true batch_size=8 max_tokens=512 lr=5e-4 warmup_steps=20 max_steps=1500 save_every=25 \
        save_every_minutes=5 log_every=5 --threads 2 --resume "${LIMIT[@]}" "${@:2}"
    ;;
pretrain-more)
    "$AURALM" train pretrain --config pretrain tokenizer="$CANDIDATE" train="$DATA/train-rest.jsonl" \
        output_dir=runs/pretrain-v3 adapter=runs/pretrain-v2/adapter batch_size=8 max_tokens=512 lr=2e-4 \
        warmup_steps=20 max_steps=2000 save_every=25 save_every_minutes=5 log_every=5 --threads 2 --resume "${LIMIT[@]}" \
        "${@:2}"
    ;;
sft)
    ADAPTER=${2:?sft needs the adapter to start from, e.g. runs/pretrain-v2/adapter}
    # the clips' codes are pretrain-v2's (the same files, the same tokenizer); typed conversations left out
    # (their manifest replies would change text answers; base replies cost ~0.65 s each here, as distill's did)
    "$AURALM" train sft --config sft tokenizer="$CANDIDATE" train="$DATA/chat_train.jsonl" \
        code_cache=runs/pretrain-v2/codes frames_cache=runs/tokenizer-v2/features output_dir=runs/sft-v3 \
        adapter="$ADAPTER" heard_first=true batch_size=8 max_tokens=512 lr=2e-4 warmup_steps=20 max_steps=480 \
        text_ratio=0 save_every=25 save_every_minutes=5 log_every=5 --threads 2 --resume "${LIMIT[@]}" "${@:3}"
    ;;
distill)
    ADAPTER=${2:?distill needs the adapter to start from, e.g. runs/pretrain-v3/adapter}
    "$AURALM" train distill --config distill tokenizer="$CANDIDATE" train="$DATA/train-4k.jsonl" \
        frames_cache=runs/tokenizer-v2/features output_dir=runs/distill-v4 adapter="$ADAPTER" batch_size=8 \
        max_tokens=512 lr=1e-4 warmup_steps=10 max_steps=240 text_ratio=0.5 noise_ratio=0.15 reply_tokens=48 \
        save_every=25 save_every_minutes=5 log_every=5 --threads 2 --resume "${LIMIT[@]}" "${@:3}"
    ;;
ab)
    KIND=${2:?ab needs wide, wide-heads, wide-rank or lora}
    case $KIND in
    wide) SETTINGS=(widen_dims=72 widen_neurons=128 widen_heads=0 lr=2e-3) ;;
    wide-heads) SETTINGS=(widen_dims=72 widen_neurons=128 widen_heads=1 lr=2e-3) ;;
    wide-rank) SETTINGS=(widen_dims=72 widen_neurons=32 widen_heads=1 widen_head_rank=32 lr=2e-3) ;;  # package size
    lora) SETTINGS=(lr=5e-4) ;;
    *) echo "ab: wide, wide-heads, wide-rank or lora, not $KIND" >&2 && exit 2 ;;
    esac
    head -n 4434 "$DATA/train.jsonl" >"$DATA/train-4434.jsonl"  # all of `data synth --examples 5000`'s train split
    "$AURALM" train pretrain --config pretrain tokenizer="$CANDIDATE" train="$DATA/train-4434.jsonl" \
        code_cache=runs/codes-v2 output_dir="runs/ab-$KIND" batch_size=8 max_tokens=512 warmup_steps=20 max_steps=120 \
        save_every=25 save_every_minutes=5 log_every=5 --threads 2 --resume "${LIMIT[@]}" "${SETTINGS[@]}" "${@:3}"
    ;;
wide)
    head -n 17588 "$DATA/train.jsonl" >"$DATA/train-17588.jsonl"  # all of `data synth --examples 20000`'s train split
    head -n 48 "$DATA/val.jsonl" >"$DATA/val-48.jsonl"  # val_loss every 50 steps (~10 s each)
    # from scratch, one epoch (5,850 rows), as a fresh machine restarts it; the runs of RESULTS.md before
    # 2026-12-07's restart went 1.5 epochs over these clips from `ab wide-rank`'s adapter (wide-v2), then wide-more
    "$AURALM" train pretrain --config pretrain tokenizer="$CANDIDATE" train="$DATA/train-17588.jsonl" \
        code_cache=runs/codes-v2 output_dir=runs/wide-1 widen_dims=72 widen_neurons=32 widen_heads=1 \
        widen_head_rank=32 lr=2e-3 batch_size=8 max_tokens=512 warmup_steps=20 max_steps=730 save_every=25 \
        save_every_minutes=5 log_every=5 val="$DATA/val-48.jsonl" val_every=50 --threads 2 --resume "${LIMIT[@]}" \
        "${@:2}"
    ;;
wide-more)
    # one epoch over clips the widened LLM has not heard, from the last run's adapter with a fresh optimizer (its
    # optimizer's state is not carried: RESULTS.md, 2026-12-06, wide-v3)
    FROM=${FROM:-runs/wide-1} TO=${TO:-runs/wide-2} LINES=${LINES:-17589,25538}
    sed -n "${LINES}p" "$DATA/train.jsonl" >"$DATA/train-${LINES/,/-}.jsonl"
    exec bash benchmarks/retrain_cpu.sh wide train="$DATA/train-${LINES/,/-}.jsonl" output_dir="$TO" adapter="$FROM/adapter" \
        lr=5e-4 warmup_steps=10 max_steps=330 "${@:2}"
    ;;
wide-all)
    exec bash benchmarks/retrain_cpu.sh wide train="$DATA/train.jsonl" output_dir=runs/wide-all ctc_weight=0.3 \
        max_steps=3000 decay_steps=300 "${@:2}"
    ;;
wide-all-cool)
    COOL=${COOL:-150}
    LATEST=$(find runs/wide-all/checkpoints -maxdepth 1 -name 'step-*' 2>/dev/null | sort | tail -n 1 || true)
    [[ -n $LATEST ]] || { echo "wide-all-cool: runs/wide-all has no checkpoint yet; train wide-all first" >&2 && exit 2; }
    STEP=$((10#${LATEST##*step-}))
    TO=runs/wide-all-cool-$STEP
    if [[ ! -d $TO ]]; then  # the checkpoint and the metrics so far; the copy then goes on by itself
        mkdir -p "$TO/checkpoints" && cp -r "$LATEST" "$TO/checkpoints/" && cp runs/wide-all/metrics.jsonl "$TO/"
    fi
    exec bash benchmarks/retrain_cpu.sh wide-all output_dir="$TO" max_steps=$((STEP + COOL)) decay_steps="$COOL" \
        "${@:2}"
    ;;
sft-wide)
    # the sft stage from wide-v2's adapter (its step 943 for RESULTS.md's 2026-12-06 run) at a widened LLM's lr,
    # val_loss every 60 steps on the validation conversations of val-48's clips (whose codes the wide stage cached)
    sed 's/.*"audio": "\([^"]*\)".*/"path": "\1"/' "$DATA/val-48.jsonl" | grep -F -f - "$DATA/chat_val.jsonl" \
        >"$DATA/chat_val-48.jsonl"
    exec bash benchmarks/retrain_cpu.sh sft runs/wide-v2/adapter code_cache=runs/codes-v2 output_dir=runs/sft-wide lr=5e-4 max_steps=360 \
        val="$DATA/chat_val-48.jsonl" val_every=60 "${@:2}"
    ;;
sft-hear)
    # sft of the widened LLM that teaches only what pretraining lacks (RESULTS.md, 2026-12-07): noise → refusal, and
    # spoken questions answered as the base LLM answers them typed (spoken_replies=base; ~0.7 s a reply here, so
    # the conversations of the first clips only: LINES lines of chat_train), each led by its heard line
    LINES=${LINES:-8000}
    head -n "$LINES" "$DATA/chat_train.jsonl" >"$DATA/chat_train-$LINES.jsonl"
    exec bash benchmarks/retrain_cpu.sh sft-wide train="$DATA/chat_train-$LINES.jsonl" adapter=runs/wide-v4/adapter \
        output_dir=runs/sft-hear spoken_replies=base max_steps=200 val_every=50 "${@:2}"
    ;;
sft-noise)
    # what sft-hear costs the transcription, left out (RESULTS.md, 2026-12-07): wide-v4 taught only to refuse noise,
    # beside the transcription requests of chat_train that pretraining already gives, at sft-v3's lr
    grep -F '"Transcribe the speech."' "$DATA/chat_train.jsonl" >"$DATA/chat_train-transcribe.jsonl"
    exec bash benchmarks/retrain_cpu.sh sft-wide train="$DATA/chat_train-transcribe.jsonl" adapter=runs/wide-v4/adapter \
        output_dir=runs/sft-noise noise_ratio=0.15 lr=2e-4 max_steps=120 val_every=40 "${@:2}"
    ;;
sft-qa)
    # sft-noise-2 taught to answer spoken questions again (RESULTS.md, 2026-12-07): every spoken question and
    # instruction of chat_train (manifest replies, each led by its heard line) beside as many transcription requests
    grep -v -F '"Transcribe the speech."' "$DATA/chat_train.jsonl" | grep -F '"audio"' >"$DATA/chat_train-spoken.jsonl"
    grep -m "$(wc -l <"$DATA/chat_train-spoken.jsonl")" -F '"Transcribe the speech."' "$DATA/chat_train.jsonl" \
        >>"$DATA/chat_train-spoken.jsonl"
    exec bash benchmarks/retrain_cpu.sh sft-wide train="$DATA/chat_train-spoken.jsonl" \
        adapter=runs/sft-noise-2/adapter output_dir=runs/sft-qa noise_ratio=0.15 lr=2e-4 max_steps=120 val_every=40 \
        "${@:2}"
    ;;
eval)
    RUN=${2:?eval needs the run folder, e.g. runs/pretrain-v2}
    "$AURALM" eval "$DATA/val.jsonl" --limit 60 --llm smollm2 --adapter "$RUN/adapter" --checkpoint "$CANDIDATE" \
        --json "runs/eval-$(basename "$RUN")-val.json"
    ;;
*)
    echo "usage: [MINUTES=N] bash benchmarks/retrain_cpu.sh data|tokenizer|pretrain|pretrain-more|sft ADAPTER|\
distill ADAPTER|ab wide|wide-heads|wide-rank|lora|wide|wide-more|wide-all|wide-all-cool|sft-wide|sft-hear|sft-noise|sft-qa|eval RUN [key=value …]" >&2
    exit 2
    ;;
esac
