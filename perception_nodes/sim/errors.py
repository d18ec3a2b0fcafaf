"""The simulator's user-facing error (no MuJoCo import here, so it can be caught before MuJoCo loads)."""

from __future__ import annotations


class SimError(RuntimeError):
    """The simulation cannot run here (MuJoCo or OpenGL missing); the message says what to install."""


GL_HINT = (
    "install the software renderer (Debian/Ubuntu: sudo apt-get install libosmesa6) "
    "and set MUJOCO_GL=osmesa, "
    "or set MUJOCO_GL=egl on a machine with a GPU driver"
)
