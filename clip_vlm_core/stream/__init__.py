"""Live camera streams to captions, without ROS: check, pair by stamp, queue by policy, decode, caption, count.

The ROS node (ros2_ws/src/clip_vlm) is a thin adapter over these pieces.
"""

from clip_vlm_core.stream.batching import POLICIES, PairQueue
from clip_vlm_core.stream.config import PARAMETERS, CaptionNodeConfig, validate_parameters
from clip_vlm_core.stream.frames import BadFrame, Frame, decode_image_message, image_from_message, stamp_to_ns
from clip_vlm_core.stream.pairing import FramePair, FramePairer
from clip_vlm_core.stream.questions import Question, QuestionQueue
from clip_vlm_core.stream.stats import StreamReport, StreamStats
from clip_vlm_core.stream.worker import CaptionWorker

__all__ = [
    "POLICIES",
    "PARAMETERS",
    "BadFrame",
    "CaptionNodeConfig",
    "CaptionWorker",
    "Frame",
    "FramePair",
    "FramePairer",
    "PairQueue",
    "Question",
    "QuestionQueue",
    "StreamReport",
    "StreamStats",
    "decode_image_message",
    "image_from_message",
    "stamp_to_ns",
    "validate_parameters",
]
