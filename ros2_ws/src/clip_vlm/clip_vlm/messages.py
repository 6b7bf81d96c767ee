"""Captions and reports as ROS messages: the only place that knows the message layouts."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from clip_vlm_core.stream import StreamReport

LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN, "ERROR": DiagnosticStatus.ERROR}

try:  # RViz's 2-D overlay, when rviz_2d_overlay_msgs is installed
    from rviz_2d_overlay_msgs.msg import OverlayText
except ImportError:
    OverlayText = None


def ns_to_time(stamp_ns: int) -> Time:
    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def caption_marker(caption: str, stamp_ns: int, frame_id: str) -> Marker:
    """A text marker floating above the car; its header stamp is the source frames' stamp, so tools can
    match a caption to the frames it describes (std_msgs/String has no stamp)."""
    marker = Marker()
    marker.header = Header(stamp=ns_to_time(stamp_ns), frame_id=frame_id or "base_link")
    marker.ns = "scene_caption"
    marker.id = 0
    marker.type = Marker.TEXT_VIEW_FACING
    marker.action = Marker.ADD
    marker.pose.position.z = 3.0
    marker.pose.orientation.w = 1.0
    marker.scale.z = 0.5
    marker.color.r = marker.color.g = marker.color.b = marker.color.a = 1.0
    marker.text = caption
    return marker


def rgb_image(image: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    msg = Image()
    msg.header = Header(stamp=ns_to_time(stamp_ns), frame_id=frame_id)
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


def overlay_text(caption: str):
    msg = OverlayText()
    msg.action = OverlayText.ADD
    msg.width, msg.height = 800, 120
    msg.text_size = 14.0
    msg.line_width = 2
    msg.fg_color.r = msg.fg_color.g = msg.fg_color.b = msg.fg_color.a = 1.0
    msg.bg_color.a = 0.5
    msg.text = caption
    return msg


def diagnostic_array(report: StreamReport, name: str, hardware_id: str, now: Time) -> DiagnosticArray:
    status = DiagnosticStatus(
        level=LEVELS[report.level],
        name=name,
        message=report.message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in report.values],
    )
    return DiagnosticArray(header=Header(stamp=now), status=[status])
