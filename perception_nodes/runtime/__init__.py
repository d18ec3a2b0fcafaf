"""The Bus and its backends (rclpy, rosbag replay), message types, bags and conversions."""
