#!/usr/bin/env bash
# The GPU benchmark in two runs that each fit a device slot (< 6 minutes, < 64 MiB carried with the tree):
#   run1  the GPU-only tests; transformers' image processor on the GPU against the captioner's own path
#         (JPEG bytes to model inputs); caption latency and throughput at the recipe's 480 tokens per view
#   run2  training step time and peak GPU memory, bf16 LoRA against QLoRA (nf4 base + 8-bit AdamW), at 480
#         tokens per view; the memory estimate's table beside them
# Both on random weights of the full shapes (Qwen2.5-VL-3B + ViT-L-14) unless the hub cache holds the real ones.
#
# Usage: scripts/bench-gpu.sh [--rehearse] [OUT_DIR [run1|run2|STEP...]]   (default: out/bench-gpu, run1 and run2)
#   Steps: gpu-tests preprocess caption train train-qlora memory-table
#   --rehearse: the same steps on this machine's CPU with the tiny model (no GPU needed), to check that the
#   script, the wheels and the GPU machine's library versions work together (make rehearse-gpu).
# On the GPU machine (Python 3.12, torch 2.11, transformers 5.17, no open_clip, no bitsandbytes, no network), first
# here: scripts/fetch-gpu-wheels.sh, then a device run carrying gpu-wheels (run2 needs gpu-wheels/qlora too):
#   scripts/bench-gpu.sh out/bench-gpu run1
# Wheels found in gpu-wheels/ are installed into a private folder put first on PYTHONPATH, above the machine's own.
set -uo pipefail
rehearse=0
if [ "${1:-}" = "--rehearse" ]; then rehearse=1; shift; fi
out=${1:-out/bench-gpu}
shift $(( $# > 0 ? 1 : 0 ))
only=" $* "
only=${only/ run1 / gpu-tests preprocess caption }
only=${only/ run2 / train train-qlora memory-table }
mkdir -p "$out"
exec > >(tee "$out/bench-gpu.log") 2>&1  # everything also to OUT_DIR/bench-gpu.log
py=${PYTHON:-}
if [ -z "$py" ]; then py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start_all=$SECONDS

wheels=$(ls gpu-wheels/*/*.whl 2>/dev/null)
if [ -n "$wheels" ]; then
  site=${CLIP_VLM_WHEEL_SITE:-/tmp/clip-vlm-site}
  echo "=== installing $(echo "$wheels" | wc -l) carried wheel(s) into $site"
  # shellcheck disable=SC2086
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $wheels \
    || { echo "=== the carried wheels did not install"; exit 1; }
  export PYTHONPATH="$site:$PYTHONPATH"
fi
"$py" -c 'import sys, torch, transformers, numpy; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, '\
'transformers {transformers.__version__}, numpy {numpy.__version__}, cuda {torch.cuda.is_available()}")' | tee "$out/versions.txt"

if [ $rehearse = 1 ]; then
  # the suite's CPU halves of the GPU test files take minutes on a small shared CPU
  model=(--tiny --device cpu); caption_sizes=(1 2); train_sizes=(2); iters=(--iters 2 --warmup 1); tests_limit=600
else
  model=(--max-pixels 401408); caption_sizes=(1 8 32); train_sizes=(4 8); iters=(--iters 3 --warmup 1); tests_limit=180
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
fi
bench=("$py" -m clip_vlm_core bench)  # a command `timeout` can run (it cannot run a shell function)
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
# run1: under 6 minutes on an H200 (the steps' limits add up to 340 s)
step gpu-tests "$tests_limit" "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_fast_decode.py \
  tests/test_preprocess_gpu.py
if [ $rehearse = 1 ]; then
  step preprocess 60 "${bench[@]}" preprocess --tiny --device cpu --iters 2 --warmup 1 --out "$out/bench-preprocess.json"
else
  step preprocess 60 "${bench[@]}" preprocess --device cuda --max-pixels 401408 --out "$out/bench-preprocess.json"
fi
step caption 100 "${bench[@]}" caption "${model[@]}" --batch-sizes "${caption_sizes[@]}" --max-new-tokens 32 "${iters[@]}" \
  --out "$out/bench-caption.json"
# run2: about 5 minutes at most (150 + 150 + 30 s)
step train 150 "${bench[@]}" train "${model[@]}" --batch-sizes "${train_sizes[@]}" "${iters[@]}" --out "$out/bench-train.json"
step train-qlora 150 "${bench[@]}" train "${model[@]}" --batch-sizes "${train_sizes[@]}" "${iters[@]}" --quantize nf4 \
  --optimizer adamw8bit --out "$out/bench-train-qlora.json"
step memory-table 30 "$py" -m clip_vlm_core.memory_estimate
echo "=== all steps: $((SECONDS - start_all)) s, exit $status"
exit $status
