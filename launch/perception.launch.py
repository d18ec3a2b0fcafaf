"""Launch the perception stack on a robot: ``ros2 launch perception_nodes perception.launch.py``.

Every argument has a description (``ros2 launch perception_nodes perception.launch.py --show-args``).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = [
    ("image_topic", "/camera/color/image_raw", "input sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8 or mono8)"),
    ("camera_info_topic", "/camera/color/camera_info", "sensor_msgs/CameraInfo of the input image"),
    (
        "depth_topic",
        "/camera/aligned_depth_to_color/image_raw",
        "optional depth aligned to colour (16UC1 mm or 32FC1 m)",
    ),
    (
        "self_mask_topic",
        "/robot/self_mask",
        "optional mono8 mask of the robot's own body aligned to colour, same stamp, from its kinematics "
        "(e.g. a URDF self-filter): one segment with id 65535 ('' = none)",
    ),
    (
        "identity",
        "true",
        "run the identity node (decode, check, republish): a transport and latency baseline",
    ),
    ("identity_output_topic", "/perception/identity/image", "where the identity node republishes images"),
    ("segmentation", "true", "run the EISEN segmentation node (publishes /perception/segments)"),
    ("tracking", "true", "run the point tracker (publishes /perception/tracks, seeded on segments)"),
    ("forecast", "true", "run the ARFM forecaster on the tracks (publishes /perception/forecast)"),
    ("use_sim_time", "false", "use /clock (true when replaying a bag with ros2 bag play --clock)"),
    ("log_level", "info", "node log level: debug, info, warn, error"),
]


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=desc)
        for name, default, desc in ARGUMENTS
    ]
    use_sim_time = LaunchConfiguration("use_sim_time")
    identity = Node(
        package="perception_nodes",
        executable="identity_node",
        name="identity",
        output="screen",
        condition=IfCondition(LaunchConfiguration("identity")),
        parameters=[
            {
                "input_topic": LaunchConfiguration("image_topic"),
                "camera_info_topic": LaunchConfiguration("camera_info_topic"),
                "output_topic": LaunchConfiguration("identity_output_topic"),
                "use_sim_time": use_sim_time,
            }
        ],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    camera = {
        "image_topic": LaunchConfiguration("image_topic"),
        "use_sim_time": use_sim_time,
    }
    capabilities = [
        Node(
            package="perception_nodes",
            executable=f"{name}_node",
            name=name,
            output="screen",
            condition=IfCondition(LaunchConfiguration(name)),
            parameters=[{**camera, **extra}],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        )
        for name, extra in (
            (
                "segmentation",
                {
                    "camera_info_topic": LaunchConfiguration("camera_info_topic"),
                    "depth_topic": LaunchConfiguration("depth_topic"),
                    "self_mask_topic": LaunchConfiguration("self_mask_topic"),
                },
            ),
            ("tracking", {}),
            ("forecast", {}),
        )
    ]
    return LaunchDescription([*declared, identity, *capabilities])
