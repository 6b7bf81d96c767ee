#!/usr/bin/env bash
# The GPU benchmark run of issues 8 and 15 in one command: the GPU-only tests, then `clip-vlm bench` for
# preprocessing (JPEG bytes to model inputs: transformers' processor vs the captioner's path on the GPU),
# captioning (the fast defaults, the plain transformers path, a resolution cap) and training.
# Usage: scripts/bench-gpu.sh [OUT_DIR [STEP...]]   (default: out/bench-gpu, every step; JSON reports and
#        logs land in OUT_DIR). Steps: gpu-tests preprocess preprocess-batch8 preprocess-480tok caption
#        caption-transformers caption-480tok train train-480tok
# Needs a CUDA GPU and clip_vlm_core importable (`make venv`, or PYTHONPATH with its dependencies).
set -uo pipefail
out=${1:-out/bench-gpu}
shift $(( $# > 0 ? 1 : 0 ))
only=" $* "
mkdir -p "$out"
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=.venv/bin/python
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
bench() { "$py" -c 'import sys; from clip_vlm_core.cli import main; sys.exit(main(sys.argv[1:]))' bench "$@"; }
status=0
step() {  # step NAME SECONDS COMMAND...: run, log, keep going after a failure
  local name=$1 limit=$2; shift 2
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
step gpu-tests 240 "$py" -m pytest --noconftest -q -p no:cacheprovider tests/test_gpu.py tests/test_fast_decode.py \
  tests/test_preprocess_gpu.py
step preprocess 120 bench preprocess --device cuda --out "$out/bench-preprocess.json"
step preprocess-batch8 180 bench preprocess --device cuda --pairs 8 --iters 10 --out "$out/bench-preprocess-batch8.json"
step preprocess-480tok 120 bench preprocess --device cuda --max-pixels 401408 --out "$out/bench-preprocess-480tok.json"
step caption 400 bench caption --batch-sizes 1 8 32 --max-new-tokens 48 --out "$out/bench-caption.json"
step caption-transformers 300 bench caption --batch-sizes 1 8 --max-new-tokens 48 --iters 3 --warmup 1 \
  --decoder transformers --vision-attention sdpa --no-merge-lora --out "$out/bench-caption-transformers.json"
step caption-480tok 300 bench caption --batch-sizes 1 8 32 --max-new-tokens 48 --max-pixels 401408 \
  --out "$out/bench-caption-480tok.json"
step train 500 bench train --batch-sizes 8 16 --out "$out/bench-train.json"
step train-480tok 400 bench train --batch-sizes 8 16 32 --max-pixels 401408 --out "$out/bench-train-480tok.json"
exit $status
