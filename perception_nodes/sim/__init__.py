"""MuJoCo tabletop simulation: seeded scenes of objects made of functional parts, a pusher that moves them,
every ground truth per frame (depth, instance/part masks, poses, point tracks, flow) and rosbag2 output.

Importing this package does not import MuJoCo; ``world``/``live``/``demo_bag`` do (headless backend:
MUJOCO_GL=osmesa on CPU, egl on GPUs, chosen in ``gl.py`` when unset). ``dataset`` and ``episode`` read
bags without MuJoCo.
"""

from __future__ import annotations

from pathlib import Path

from perception_nodes.sim.config import SimConfig
from perception_nodes.sim.episode import Episode

__all__ = ["Episode", "SimConfig", "demo_bag", "generate_episode", "read_episodes"]


def generate_episode(cfg: SimConfig, seed: int) -> Episode:
    """See ``perception_nodes.sim.world.generate_episode``."""
    from perception_nodes.sim.world import generate_episode as _generate

    return _generate(cfg, seed)


def read_episodes(bag_paths):
    """See ``perception_nodes.sim.dataset.read_episodes``."""
    from perception_nodes.sim.dataset import read_episodes as _read

    return _read(bag_paths)


def demo_bag(
    path: str | Path,
    frames: int = 24,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    overwrite: bool = True,
) -> Path:
    """Generate one small sim episode bag at ``path`` quickly (seconds on a CPU); returns the path."""
    from perception_nodes.sim.bagio import write_episode_bag
    from perception_nodes.sim.world import generate_episode as _generate

    cfg = SimConfig(width=int(size[0]), height=int(size[1]), frames=int(frames))
    return write_episode_bag(_generate(cfg, seed), Path(path), cfg=cfg, overwrite=overwrite)
