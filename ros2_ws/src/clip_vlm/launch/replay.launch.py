"""Replay a converted nuScenes bag into clip_vlm's caption node, captioning every frame.

    ros2 launch clip_vlm replay.launch.py bag:=bags/scene-0061
    ros2 launch clip_vlm replay.launch.py bag:=bags/scene-0061 rate:=0.5 loop:=true policy:=latest

The bag is played with --clock and the node uses sim time, so the source-stamp latency in
/diagnostics is measured against the bag's own clock.
"""

# ruff takes `launch` (ROS) for the repo's own launch/ folder and would split the imports below.
# ruff: noqa: I001
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def bag_play(context):
    command = ["ros2", "bag", "play", LaunchConfiguration("bag").perform(context),
               "--clock", "--rate", LaunchConfiguration("rate").perform(context)]
    if LaunchConfiguration("loop").perform(context).lower() in ("true", "1", "yes"):
        command.append("--loop")
    return [ExecuteProcess(cmd=command, output="screen", name="bag_play")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="folder of a rosbag2 bag (clip-vlm bag convert writes them)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("loop", default_value="false", description="play the bag again and again"),
        DeclareLaunchArgument("policy", default_value="all",
                              description="all: caption every frame pair; latest: only the freshest"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("clip_vlm"), "config", "caption.yaml"]),
            description="YAML file of caption_node parameters",
        ),
        Node(
            package="clip_vlm",
            executable="caption_node",
            name="caption_node",
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                {"policy": LaunchConfiguration("policy"), "use_sim_time": True},
            ],
        ),
        OpaqueFunction(function=bag_play),
    ])
