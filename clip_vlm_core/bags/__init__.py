"""nuScenes scenes as rosbag2 bags: convert, inspect, replay.

`play_bag` imports rclpy only when called, so this package imports on machines without ROS.
"""

from clip_vlm_core.bags.convert import BagConvertOptions, convert_scene
from clip_vlm_core.bags.info import BagInfo, format_bag_info, read_bag_info
from clip_vlm_core.bags.play import PlaySummary, play_bag
from clip_vlm_core.bags.scene_plan import CAMERAS, DEFAULT_CAMERAS, load_nuscenes

__all__ = [
    "CAMERAS",
    "DEFAULT_CAMERAS",
    "BagConvertOptions",
    "BagInfo",
    "PlaySummary",
    "convert_scene",
    "format_bag_info",
    "load_nuscenes",
    "play_bag",
    "read_bag_info",
]
