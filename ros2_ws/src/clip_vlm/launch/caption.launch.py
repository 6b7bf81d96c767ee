"""Start clip_vlm's caption node (and, with overlay:=true, an RViz text overlay of its captions).

    ros2 launch clip_vlm caption.launch.py
    ros2 launch clip_vlm caption.launch.py model:=/path/to/checkpoint device:=cuda overlay:=true
    ros2 launch clip_vlm caption.launch.py params_file:=/path/to/my_caption.yaml namespace:=car1

model and device, when given, override the params file; left empty, the params file decides.
"""

# ruff takes `launch` (ROS) for the repo's own launch/ folder and would split the imports below.
# ruff: noqa: I001
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def given(**overrides):
    """Only the overrides a user actually gave, so an empty launch argument leaves the params file's value."""
    return {name: value for name, value in overrides.items() if value != ""}


def caption_node(context):
    return [
        Node(
            package="clip_vlm",
            executable="caption_node",
            name="caption_node",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                given(
                    model=LaunchConfiguration("model").perform(context),
                    device=LaunchConfiguration("device").perform(context),
                ),
            ],
        )
    ]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("clip_vlm"), "config", "caption.yaml"]),
            description="YAML file of caption_node parameters (/**: ros__parameters: ...)",
        ),
        DeclareLaunchArgument("model", default_value="", description="checkpoint folder or hub id; '' = params file"),
        DeclareLaunchArgument("device", default_value="", description="cpu, cuda or cuda:N; '' = params file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace for the node and its topics"),
        DeclareLaunchArgument("overlay", default_value="false",
                              description="also start rviz_2d_overlay_plugins' string_to_overlay_text"),
        OpaqueFunction(function=caption_node),
        Node(
            package="rviz_2d_overlay_plugins",
            executable="string_to_overlay_text",
            name="scene_caption_overlay",
            namespace=LaunchConfiguration("namespace"),
            condition=IfCondition(LaunchConfiguration("overlay")),
            parameters=[{"string_topic": "scene_caption", "fg_color": "w"}],
        ),
    ])
