"""ROS 2 messages for converted nuScenes bags, built and serialized with rosbags' Humble typestore.

Every builder returns CDR bytes ready for `Writer.write`: the same bytes rclpy puts on the wire, so
`bag play` can publish them without a round trip through Python message objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.typesys import Stores, get_typestore

# Humble is the oldest distro the bags must play on; its definitions are a subset of later ones.
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
T = TYPESTORE.types

COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
RAW_IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
STRING = "std_msgs/msg/String"

MAP_FRAME = "map"
BASE_FRAME = "base_link"

_UNSPECIFIED = QosTime(0, 0)


def offered_qos(durability: QosDurability, depth: int) -> Qos:
    """A reliable keep-last offer, as rosbag2 records it, with the given durability."""
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=depth,
        reliability=QosReliability.RELIABLE,
        durability=durability,
        deadline=_UNSPECIFIED,
        lifespan=_UNSPECIFIED,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=_UNSPECIFIED,
        avoid_ros_namespace_conventions=False,
    )


# Streams are what a camera driver offers (rclcpp's default profile); /tf_static is latched like
# tf2_ros.StaticTransformBroadcaster, so a node that starts late still gets the camera mounts.
STREAM_QOS = offered_qos(QosDurability.VOLATILE, depth=10)
LATCHED_QOS = offered_qos(QosDurability.TRANSIENT_LOCAL, depth=1)


def header(stamp_ns: int, frame_id: str) -> object:
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def serialize(message: object) -> memoryview:
    # A view, not bytes: an image is copied often enough on its way into the storage file already.
    return TYPESTORE.serialize_cdr(message, message.__msgtype__)


def compressed_image(stamp_ns: int, frame_id: str, jpeg: bytes) -> memoryview:
    """The JPEG bytes as they are: no decode, no re-encode."""
    data = np.frombuffer(jpeg, dtype=np.uint8)
    return serialize(T[COMPRESSED_IMAGE](header=header(stamp_ns, frame_id), format="jpeg", data=data))


def raw_image(stamp_ns: int, frame_id: str, rgb: np.ndarray) -> memoryview:
    """An HxWx3 uint8 array as an rgb8 Image."""
    height, width, _ = rgb.shape
    return serialize(
        T[RAW_IMAGE](
            header=header(stamp_ns, frame_id),
            height=height,
            width=width,
            encoding="rgb8",
            is_bigendian=0,
            step=width * 3,
            data=np.ascontiguousarray(rgb).reshape(-1),
        )
    )


def camera_info(stamp_ns: int, frame_id: str, intrinsic: Sequence[Sequence[float]], width: int, height: int) -> memoryview:
    """Pinhole calibration: nuScenes images are already undistorted, hence D = 0 and R = I."""
    k = np.asarray(intrinsic, dtype=np.float64).reshape(3, 3)
    p = np.zeros((3, 4), dtype=np.float64)
    p[:, :3] = k
    return serialize(
        T[CAMERA_INFO](
            header=header(stamp_ns, frame_id),
            height=height,
            width=width,
            distortion_model="plumb_bob",
            d=np.zeros(5, dtype=np.float64),
            k=k.reshape(-1),
            r=np.eye(3, dtype=np.float64).reshape(-1),
            p=p.reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
    )


def transform(stamp_ns: int, parent: str, child: str, translation: Sequence[float], rotation_wxyz: Sequence[float]) -> object:
    """A TransformStamped from nuScenes' translation and (w, x, y, z) quaternion."""
    x, y, z = (float(v) for v in translation)
    qw, qx, qy, qz = (float(v) for v in rotation_wxyz)
    return T["geometry_msgs/msg/TransformStamped"](
        header=header(stamp_ns, parent),
        child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
            rotation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
        ),
    )


def tf_message(transforms: Sequence[object]) -> memoryview:
    return serialize(T[TF_MESSAGE](transforms=list(transforms)))


def string(text: str) -> memoryview:
    return serialize(T[STRING](data=text))


def deserialize(raw: bytes | memoryview, msgtype: str) -> object:
    return TYPESTORE.deserialize_cdr(raw, msgtype)
