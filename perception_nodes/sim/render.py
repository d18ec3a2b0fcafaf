"""Offscreen rendering of one MuJoCo camera: RGB + metric depth in one pass, geom ids in a second pass.

One GL context per process and image size is created lazily and reused by every episode (creating
OSMesa/EGL contexts is the slow part); each model gets its own ``MjrContext`` (textures are per model).
The segmentation pass draws each geom in a flat id colour with lighting off, which costs a few ms.
"""

from __future__ import annotations

import atexit

import numpy as np

from perception_nodes.sim.gl import make_gl_context, mujoco

_CONTEXTS: dict[tuple[int, int], object] = {}


def _context(width: int, height: int):
    key = (width, height)
    if key not in _CONTEXTS:
        if not _CONTEXTS:
            atexit.register(free_contexts)
        _CONTEXTS[key] = make_gl_context(width, height)
    return _CONTEXTS[key]


def free_contexts() -> None:
    """Free this process's GL contexts (at exit, before PyOpenGL is torn down, which otherwise warns)."""
    while _CONTEXTS:
        _, ctx = _CONTEXTS.popitem()
        ctx.free()


class FrameRenderer:
    """Render camera ``camera_id`` of ``model`` at the model's offscreen size (vis.global_.offwidth, ...)."""

    def __init__(self, model, camera_id: int, shadows: bool = True):
        self.model = model
        self.width, self.height = int(model.vis.global_.offwidth), int(model.vis.global_.offheight)
        self._ctx = _context(self.width, self.height)
        self._ctx.make_current()
        self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100.value)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._mjr)
        self._mjr.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=1000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = bool(shadows)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = camera_id
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.empty((self.height, self.width, 3), np.uint8)
        self._zbuf = np.empty((self.height, self.width), np.float32)
        self._seg = np.empty((self.height, self.width, 3), np.uint8)
        extent = float(model.stat.extent)
        self.near, self.far = float(model.vis.map.znear) * extent, float(model.vis.map.zfar) * extent

    def render(self, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """rgb (H, W, 3) uint8; depth (H, W) float32 m along the optical axis (0 = nothing);
        geom (H, W) int32 MuJoCo geom id per pixel (-1 = nothing). Row 0 is the top of the image."""
        m = self.model
        self._ctx.make_current()
        mujoco.mjv_updateScene(
            m, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL.value, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._mjr)
        mujoco.mjr_readPixels(self._rgb, self._zbuf, self._rect, self._mjr)
        flags = self._scene.flags
        saved = flags.copy()
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
        try:
            mujoco.mjr_render(self._rect, self._scene, self._mjr)
            mujoco.mjr_readPixels(self._seg, None, self._rect, self._mjr)
        finally:
            np.copyto(flags, saved)
        rgb = np.ascontiguousarray(self._rgb[::-1])
        depth = self._metric_depth(self._zbuf[::-1])
        return rgb, depth, self._geom_ids(self._seg[::-1])

    def _metric_depth(self, zbuf: np.ndarray) -> np.ndarray:
        """Undo MuJoCo's reversed-Z perspective depth (readDepthMap ZEROFAR) into metres; far/empty -> 0."""
        n, f = self.near, self.far
        c = 0.5 * (f + n) / (f - n) - 0.5
        d = f * n / (f - n)
        depth = (d / (zbuf.astype(np.float64) + c)).astype(np.float32)
        depth[zbuf <= 0] = 0.0
        return depth

    def _geom_ids(self, seg: np.ndarray) -> np.ndarray:
        segid = (
            seg[..., 0].astype(np.int32)
            | (seg[..., 1].astype(np.int32) << 8)
            | (seg[..., 2].astype(np.int32) << 16)
        )
        ngeom = self._scene.ngeom
        lut = np.full(ngeom + 1, -1, np.int32)
        geom_type = int(mujoco.mjtObj.mjOBJ_GEOM)
        for i in range(ngeom):
            g = self._scene.geoms[i]
            if g.segid >= 0 and g.objtype == geom_type:
                lut[g.segid + 1] = g.objid
        return lut[np.clip(segid, 0, ngeom)]

    def close(self) -> None:
        if self._mjr is not None:
            self._ctx.make_current()
            self._mjr.free()
            self._mjr = None

    def __enter__(self) -> FrameRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
