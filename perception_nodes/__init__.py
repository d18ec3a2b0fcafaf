"""perception_nodes: EISEN segments, depth, functional keypoints, point tracks and ARFM forecasts for ROS 2.

Importing this package never imports ROS: nodes talk to a Bus (runtime/) with an rclpy backend on the
robot and an in-process rosbag replay backend everywhere else.
"""

__version__ = "0.1.0"
