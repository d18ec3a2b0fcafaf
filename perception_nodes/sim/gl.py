"""MuJoCo import with a headless OpenGL backend chosen before MuJoCo reads ``MUJOCO_GL``.

If ``MUJOCO_GL`` is unset we pick ``egl`` when an NVIDIA device is present and ``osmesa`` (software, CPU)
otherwise; a value set by the user always wins. Every module of ``perception_nodes.sim`` that needs MuJoCo
imports it from here, so a missing MuJoCo or OpenGL backend becomes one ``SimError`` sentence.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from perception_nodes.sim.errors import GL_HINT, SimError


def default_backend() -> str:
    return "egl" if Path("/dev/nvidia0").exists() else "osmesa"


logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL logs "no OpenGL_accelerate" at INFO

if not os.environ.get("MUJOCO_GL"):
    os.environ["MUJOCO_GL"] = default_backend()

try:
    import mujoco
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise SimError(
        f"MuJoCo is not installed ({exc}); pip install 'perception_nodes[sim]' or pip install mujoco"
    ) from exc
except RuntimeError as exc:  # an invalid MUJOCO_GL value is rejected at import
    raise SimError(f"MuJoCo cannot start its OpenGL backend ({exc}); {GL_HINT}") from exc


def backend() -> str:
    return os.environ.get("MUJOCO_GL", "")


def make_gl_context(width: int, height: int):
    """An offscreen GL context of at least ``width`` x ``height`` for the configured backend."""
    try:
        ctx = mujoco.GLContext(width, height)
        ctx.make_current()
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SimError(
            f"no OpenGL context for MuJoCo rendering (MUJOCO_GL={backend()}): {msg}; {GL_HINT}"
        ) from exc
    return ctx


__all__ = ["GL_HINT", "SimError", "backend", "make_gl_context", "mujoco"]
