#!/bin/sh
# vasticlaude demo "training": a tiny, real, resumable job (POSIX sh + awk, no Python, no GPU).
# STEPS steps of STEP_SECONDS each; the "loss" decays with the learning rate LR; a checkpoint is
# written atomically every CKPT_EVERY steps and the job resumes from it after a preemption.
set -eu
steps=${STEPS:-20}
every=${CKPT_EVERY:-4}
pause=${STEP_SECONDS:-0.2}
lr=${LR:-0.1}
ck=${VASTICLAUDE_CHECKPOINT_DIR:-./checkpoints}
out=${VASTICLAUDE_OUTPUT_DIR:-./outputs}
progress=${VASTICLAUDE_PROGRESS_FILE:-/dev/null}
mkdir -p "$ck" "$out"
step=0
loss=1.0
if [ -f "$ck/state" ]; then
  read -r step loss < "$ck/state"
  echo "resuming from checkpoint at step $step (loss $loss)"
fi
while [ "$step" -lt "$steps" ]; do
  sleep "$pause"
  step=$((step + 1))
  loss=$(awk -v l="$loss" -v r="$lr" 'BEGIN { printf "%.6f", l * (1 - r) }')
  echo "step $step/$steps loss $loss"
  if [ -n "${TRACE_FILE:-}" ]; then
    echo "${VASTICLAUDE_JOB_ID:-0} ${VASTICLAUDE_ATTEMPT:-0} $step" >> "$TRACE_FILE"
  fi
  printf '{"step": %d, "total": %d, "metrics": {"loss": %s}}\n' "$step" "$steps" "$loss" >> "$progress"
  if [ $((step % every)) -eq 0 ] || [ "$step" -eq "$steps" ]; then
    printf '%d %s\n' "$step" "$loss" > "$ck/state.tmp"
    mv "$ck/state.tmp" "$ck/state"
    printf '{"checkpoint": "state"}\n' >> "$progress"
  fi
done
printf '{"steps": %d, "lr": %s, "final_loss": %s}\n' "$steps" "$lr" "$loss" > "$out/result.json"
echo "done: final loss $loss"
