#!/usr/bin/env bash
# Fetch the wheels the GPU machine lacks into gpu-wheels/ (git-ignored; a device run names it in `carry`), for
# its Python 3.12 on x86-64, and list them with their sizes. That machine has torch 2.11, torchvision, timm,
# peft, accelerate, numpy 2, opencv, jinja2, pyyaml, tqdm, psutil, safetensors, pytest and transformers 5.17.
# It lacks:
#   base/   transformers 5.24 (5.17's forward and generate() take no `mm_encoder_outputs`, through which the
#           fused visual tokens reach Qwen; nor activation_checkpointing_enable), open_clip_torch and its two
#           small pure-Python needs (ftfy, wcwidth)
#   qlora/  bitsandbytes 0.50 (captioner.quantize, optim.optimizer=adamw8bit)
# A device run carries at most 64 MiB with the working tree: base/ alone for run 1, base/ + qlora/ for run 2
# (scripts/bench-gpu.sh run1 | run2); this prints both totals. Usage: scripts/fetch-gpu-wheels.sh [DIR]
set -euo pipefail
dir=${1:-gpu-wheels}
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && py=.venv/bin/python
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
fetch() {  # fetch GROUP REQUIREMENT...
  local group=$1; shift
  mkdir -p "$dir/$group"
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir/$group" "$@"
}
fetch base "transformers==5.24.0" "open_clip_torch==3.3.0" "ftfy==6.3.1" "wcwidth==0.9.4"
fetch qlora "bitsandbytes==0.50.2"
# The tree that travels beside them: tracked files and untracked ones git does not ignore.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
"$py" - "$dir" "$tree" <<'EOF'
import sys
from pathlib import Path

folder, tree = Path(sys.argv[1]), int(sys.argv[2])
limit = 64 * 2**20
sizes = {}
for group in ("base", "qlora"):
    for wheel in sorted((folder / group).glob("*.whl")):
        sizes.setdefault(group, []).append((wheel.name, wheel.stat().st_size))
        print(f"{group:<6} {wheel.stat().st_size / 2**20:7.1f} MiB  {wheel.name}")
base = sum(s for _, s in sizes.get("base", []))
qlora = sum(s for _, s in sizes.get("qlora", []))
print(f"working tree {tree / 2**20:.1f} MiB")
for run, total in (("run1 (base/)", base + tree), ("run2 (base/ + qlora/)", base + qlora + tree)):
    print(f"{run}: {total / 2**20:.1f} MiB with the tree, of the 64 MiB a device run carries"
          + ("" if total <= limit else "  <-- TOO LARGE"))
sys.exit(0 if base + qlora + tree <= limit else 1)
EOF
