"""ROS 2 adapter for clip_vlm_core: the caption node. The logic lives in clip_vlm_core.stream."""
