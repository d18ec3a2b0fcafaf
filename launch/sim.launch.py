"""Live simulated camera (MuJoCo tabletop) for running the stack with no robot.

``ros2 launch perception_nodes sim.launch.py`` publishes /camera/color/image_raw, camera_info, aligned depth,
/tf and ground truth, and takes pusher actions on /sim/pusher/action (perception_msgs/ActionChunk) or
/sim/pusher/cmd_vel (geometry_msgs/Twist). Combine with perception.launch.py for the closed loop.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = [
    ("seed", "0", "scene seed (same seed, same scene)"),
    ("width", "320", "image width in pixels"),
    ("height", "240", "image height in pixels"),
    ("fps", "15.0", "camera rate in Hz"),
    ("scripted", "true", "drive the pusher with the scripted expert until the first action arrives"),
    ("publish_ground_truth", "true", "publish /sim/ground_truth/* (instances, parts, tracks, poses)"),
    ("mujoco_gl", "osmesa", "MuJoCo rendering backend: osmesa (CPU, needs libosmesa6) or egl (GPU)"),
]


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=desc)
        for name, default, desc in ARGUMENTS
    ]
    params = {name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS if name != "mujoco_gl"}
    return LaunchDescription(
        [
            *declared,
            SetEnvironmentVariable("MUJOCO_GL", LaunchConfiguration("mujoco_gl")),
            Node(
                package="perception_nodes",
                executable="sim_camera_node",
                name="sim_camera",
                output="screen",
                parameters=[params],
            ),
        ]
    )
