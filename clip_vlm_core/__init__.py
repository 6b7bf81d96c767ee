"""clip_vlm_core: multi-view scene captioning (Qwen2.5-VL + OpenCLIP), data, training, bags.

Pure Python: nothing here imports ROS. The ROS 2 node in ros2_ws/src/clip_vlm is a thin shell over it.
"""

__version__ = "0.1.0"
