"""nuScenes scenes as rosbag2 bags: convert, inspect, replay; and any rosbag2 bag read as untrusted data.

`open_bag` (reader.py) opens a bag folder or a single storage file after checking what it declares
(metadata.py, storage.py); `play_bag` resolves message types only to installed interface packages
(interfaces.py) and imports rclpy only when called, so this package imports on machines without ROS.
"""

from clip_vlm_core.bags.convert import BagConvertOptions, ConvertedScene, convert_scene, convert_scenes
from clip_vlm_core.bags.info import BagInfo, format_bag_info, read_bag_info
from clip_vlm_core.bags.play import PlaySummary, play_bag
from clip_vlm_core.bags.reader import Bag, open_bag
from clip_vlm_core.bags.scene_plan import load_nuscenes

__all__ = [
    "Bag",
    "BagConvertOptions",
    "BagInfo",
    "ConvertedScene",
    "PlaySummary",
    "convert_scene",
    "convert_scenes",
    "format_bag_info",
    "load_nuscenes",
    "open_bag",
    "play_bag",
    "read_bag_info",
]
