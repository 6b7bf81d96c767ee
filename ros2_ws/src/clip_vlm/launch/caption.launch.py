"""Start clip_vlm's caption node (and, with overlay:=true, an RViz text overlay of its captions).

    ros2 launch clip_vlm caption.launch.py
    ros2 launch clip_vlm caption.launch.py model:=/path/to/checkpoint device:=cuda overlay:=true
    ros2 launch clip_vlm caption.launch.py model:=embedded:surround   # six cameras with a history
    ros2 launch clip_vlm caption.launch.py params_file:=/path/to/my_caption.yaml namespace:=car1
    ros2 launch clip_vlm caption.launch.py use_sim_time:=true     # stamps judged by a replay's /clock
    ros2 launch clip_vlm caption.launch.py lifecycle:=true        # managed: configure and activate it

model and device, when given, override the params file; left empty, the params file decides. views, left
empty, are the model's own (so model:=embedded:surround subscribes to its six cameras); given, they must be
the model's. The camera
topics are relative, so namespace:=car1 moves them too (/car1/CAM_FRONT/image_raw/compressed).
Every argument, and the params file's values with the overrides, is checked before anything starts (by
the node's own checks): a wrong one ends the launch naming it, with no node left behind. Without
rviz_2d_overlay_plugins, overlay:=true warns and starts the node alone. lifecycle:=true starts
caption_lifecycle_node unconfigured, for a lifecycle manager or `ros2 lifecycle set /caption_node configure`.
"""

# ruff takes `launch` (ROS) for the repo's own launch/ folder and would split the imports below.
# ruff: noqa: I001
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from clip_vlm.launch_plan import caption_plan, package_installed


def nodes(context):
    """Everything is decided here, before any process starts: a bad argument or a missing overlay package
    cannot leave a caption_node running behind a failed launch."""
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    plan = caption_plan(arg("params_file"), arg("model"), arg("device"), arg("namespace"), arg("use_sim_time"),
                        arg("overlay"), arg("lifecycle"), package_installed, views=arg("views"))
    if plan.warning:
        get_logger("caption.launch").warning(plan.warning)
    node_class = LifecycleNode if plan.lifecycle else Node
    actions = [
        node_class(
            package="clip_vlm",
            executable=plan.executable,
            name="caption_node",
            namespace=plan.namespace,
            output="screen",
            emulate_tty=True,
            parameters=plan.parameters,
        )
    ]
    if plan.start_overlay:
        actions.append(Node(
            package="rviz_2d_overlay_plugins",
            executable="string_to_overlay_text",
            name="scene_caption_overlay",
            namespace=plan.namespace,
            parameters=[{"string_topic": "scene_caption", "fg_color": "w"}],
        ))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("clip_vlm"), "config", "caption.yaml"]),
            description="YAML file of caption_node parameters (/**: ros__parameters: ...)",
        ),
        DeclareLaunchArgument("model", default_value="",
                              description="checkpoint folder, hub id or embedded:NAME (embedded:surround: six "
                                          "cameras with a history); '' = params file"),
        DeclareLaunchArgument("views", default_value="",
                              description="camera views, e.g. '[CAM_FRONT, CAM_BACK]'; '' = the model's own when "
                                          "known before it loads (embedded:NAME, a checkpoint folder), else the "
                                          "params file's"),
        DeclareLaunchArgument("device", default_value="", description="cpu, cuda or cuda:N; '' = params file"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace for the node and its topics, camera inputs included"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (a replay's, e.g. ros2 bag play --clock) as the node's time"),
        DeclareLaunchArgument("overlay", default_value="false",
                              description="also start rviz_2d_overlay_plugins' string_to_overlay_text "
                                          "(warns and skips it when not installed)"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="start caption_lifecycle_node, a managed node, unconfigured "
                                          "(configure loads the model, activate starts captioning)"),
        OpaqueFunction(function=nodes),
    ])
