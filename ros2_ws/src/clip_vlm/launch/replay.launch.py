"""Replay a converted nuScenes bag into clip_vlm's caption node, captioning every frame.

    ros2 launch clip_vlm replay.launch.py bag:=bags/scene-0061
    ros2 launch clip_vlm replay.launch.py bag:=bags/scene-0061 rate:=0.5 loop:=true policy:=latest
    ros2 launch clip_vlm replay.launch.py bag:=bags/scene-0061 player:=clip-vlm   # no rosbag2 installed

The bag is played with --clock and the node uses sim time, so the source-stamp latency in /diagnostics
is measured against the bag's own clock. The player starts once the node has loaded its model and
subscribed (its "captioning ..." line), so the first frames are not played to nobody.
"""

# ruff takes `launch` (ROS) for the repo's own launch/ folder and would split the imports below.
# ruff: noqa: I001
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessIO
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from clip_vlm.launch_plan import (
    bag_play_command,
    check_node_parameters,
    node_is_ready,
    replay_checks,
    replay_overrides,
)


def node_then_player(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    # Checked before anything starts: a wrong argument must not leave the node running.
    player = ExecuteProcess(cmd=bag_play_command(arg("player"), arg("bag"), arg("rate"), arg("loop")),
                            output="screen", name="bag_play")
    replay_checks(arg("rate"), arg("policy"), arg("bag"))
    check_node_parameters(arg("params_file"), replay_overrides(arg("policy")))
    node = Node(
        package="clip_vlm",
        executable="caption_node",
        name="caption_node",
        output="screen",
        emulate_tty=True,
        parameters=[arg("params_file"), replay_overrides(arg("policy"))],
    )
    started = []

    def start_player_once_ready(event):
        # rcutils logs to stderr, print() to stdout: watch both, start the player once.
        if not started and node_is_ready(event.text.decode(errors="replace")):
            started.append(True)
            return [player]
        return None

    ready = OnProcessIO(target_action=node, on_stdout=start_player_once_ready, on_stderr=start_player_once_ready)
    return [RegisterEventHandler(ready), node]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("bag", description="folder of a rosbag2 bag (clip-vlm bag convert writes them)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed factor"),
        DeclareLaunchArgument("loop", default_value="false", description="play the bag again and again"),
        DeclareLaunchArgument("player", default_value="ros2",
                              description="ros2 (ros2 bag play) or clip-vlm (clip-vlm bag play, without rosbag2)"),
        DeclareLaunchArgument("policy", default_value="all",
                              description="all: caption every frame pair; latest: only the freshest"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("clip_vlm"), "config", "caption.yaml"]),
            description="YAML file of caption_node parameters",
        ),
        OpaqueFunction(function=node_then_player),
    ])
