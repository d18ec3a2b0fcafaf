"""ament_python package ``perception_nodes``; also ``pip install -e .`` on machines without ROS."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "perception_nodes"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["config/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob(f"{PACKAGE}/config/*.yaml")),
        (
            f"share/{PACKAGE}/models",
            glob("models/*.json") + glob("models/*.safetensors") + glob("models/*.md"),
        ),
        (f"share/{PACKAGE}/calibration", glob("calibration/*.yaml")),
        # The replay backend registers perception_msgs from these very files (see runtime/typestore.py).
        (f"share/{PACKAGE}/msgs/msg", glob("msgs/msg/*.msg")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "rosbags>=0.11,<0.12",
        "pyyaml>=6",
        "tqdm>=4.60",
        "rich>=13",
        "safetensors>=0.4",
        "scipy>=1.10",
        "opencv-python-headless>=4.8",
        "transforms3d>=0.4",
    ],
    extras_require={
        "ml": ["torch>=2.3", "onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1"],
        "sim": ["mujoco>=3.1"],
        "dev": ["pytest>=8", "ruff>=0.6"],
        # RANSAC support plane for depth-aware segments; on a robot with a GPU `open3d` serves as well
        "geometry": ["open3d-cpu>=0.18"],
    },
    zip_safe=True,
    maintainer="perception_nodes developers",
    maintainer_email="dev@perception-nodes.invalid",
    description="ROS 2 perception for manipulation: EISEN segments, depth, functional keypoints, "
    "point tracks and ARFM track forecasts, fast on TensorRT.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "perception-nodes = perception_nodes.cli:main",
            "identity_node = perception_nodes.nodes.identity:main",
            "sim_camera_node = perception_nodes.sim.live:main",
            "segmentation_node = perception_nodes.nodes.segmentation_node:main",
            "tracking_node = perception_nodes.nodes.tracking_node:main",
            "forecast_node = perception_nodes.nodes.forecast_node:main",
        ],
    },
)
