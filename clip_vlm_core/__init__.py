"""clip_vlm_core: multi-view scene captioning (Qwen2.5-VL + OpenCLIP), data, training, bags.

Pure Python: nothing here imports ROS. The ROS 2 node in ros2_ws/src/clip_vlm is a thin shell over it.
"""

import logging

__version__ = "0.1.0"

# bitsandbytes (which PEFT imports, and captioner.quantize uses) warns on every import, on CPUs with AVX-512
# bf16, that an optional kernel package (`kernels`) is missing; its own CPU path runs instead, and a user can do
# nothing about the line. Set here so that it holds whichever import comes first.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
