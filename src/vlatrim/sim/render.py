"""Fast offscreen rendering of MuJoCo scenes on machines without a display.

Two things matter on a CPU machine (measured on a 2-core CPU with Mesa EGL, metaworld 3.1.1 / mujoco
3.3.0, 96 px corner frames): the default settings cost 75-118 ms per frame, the cheap ones below ~9 ms:
- ``model.vis.quality.offsamples = 0`` (no multisampling) set before the renderer is created;
- shadows and reflections switched off on the scene after *every* ``update_scene`` (it resets them).
One renderer per environment: each env owns its model, and resets write positions into it.
Mesa's llvmpipe renders in the calling thread (``LP_NUM_THREADS=0`` unless set): no helper threads.

The OpenGL backend is chosen before MuJoCo is imported (``MUJOCO_GL`` is read at import): a working
``MUJOCO_GL`` the user set is kept, otherwise EGL then OSMesa are probed in a subprocess, so a broken
backend cannot take the caller down with it. Worker processes inherit the choice.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np

from vlatrim.errors import VlatrimError

log = logging.getLogger(__name__)

BACKENDS = ("egl", "osmesa")
_CHECKED_ENV = "VLATRIM_GL_CHECKED"  # set once a backend is known to work, inherited by workers

_PROBE = (
    "import mujoco, numpy as np\n"
    "m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\".1\"/></worldbody></mujoco>')\n"
    "d = mujoco.MjData(m)\n"
    "r = mujoco.Renderer(m, 8, 8)\n"
    "r.update_scene(d)\n"
    "assert r.render().shape == (8, 8, 3)\n"
    "r.close()\n"
)


def _probe(backend: str, timeout: float = 120.0) -> str | None:
    """None when ``backend`` renders a frame in a fresh interpreter, else the last line of its error."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if res.returncode == 0:
        return None
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {res.returncode}"


def ensure_gl_backend() -> str:
    """Make sure MuJoCo can render offscreen; set ``MUJOCO_GL``/``PYOPENGL_PLATFORM``; return the backend.

    Raises:
        VlatrimError: when neither EGL nor OSMesa works (one line, with each backend's error), or when
            MuJoCo was imported earlier in this process with a backend that does not work.
    """
    checked = os.environ.get(_CHECKED_ENV)
    if checked and os.environ.get("MUJOCO_GL") == checked:
        return checked
    requested = os.environ.get("MUJOCO_GL")
    if "mujoco" in sys.modules:
        # The backend is fixed for this process; only confirm it works.
        backend = requested or "glfw"
        err = _probe(backend)
        if err:
            raise VlatrimError(f"MuJoCo was imported with MUJOCO_GL={backend!r}, which cannot render offscreen ({err}); set MUJOCO_GL=egl or osmesa before starting")
        os.environ[_CHECKED_ENV] = backend
        return backend
    order = ([requested] if requested else []) + [b for b in BACKENDS if b != requested]
    errors = []
    for backend in order:
        err = _probe(backend)
        if err is None:
            if requested and backend != requested:
                log.warning("MUJOCO_GL=%s cannot render (%s); using %s", requested, errors[0][1], backend)
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            os.environ[_CHECKED_ENV] = backend
            return backend
        errors.append((backend, err))
    detail = "; ".join(f"{b}: {e}" for b, e in errors)
    raise VlatrimError(f"no offscreen OpenGL backend works ({detail}); install libegl1 (EGL) or libosmesa6 (OSMesa)")


class OffscreenRenderer:
    """One camera of one MuJoCo model, rendered with the cheap settings.

    Args:
        model: the ``mujoco.MjModel`` of this env (its ``offsamples`` is set to 0 here).
        width, height: image size in pixels.
        camera: camera name in the model.
        rotate180: turn the image upright (Meta-World's ``corner`` camera renders upside down).
    """

    def __init__(self, model: Any, width: int, height: int, camera: str, rotate180: bool = False) -> None:
        import mujoco

        names = [model.camera(i).name for i in range(model.ncam)]
        if camera not in names:
            raise VlatrimError(f"unknown camera {camera!r}; valid: {', '.join(names)}")
        model.vis.quality.offsamples = 0  # must precede the Renderer: it sizes the offscreen buffer
        # The offscreen framebuffer must hold the image (Meta-World's default is 640x480).
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self._mujoco = mujoco
        # Mesa's software rasterizer (llvmpipe) splits each frame over helper threads, one per core by
        # default; for frames this small the hand-offs cost more than they save, and W worker processes
        # would start W x cores threads. Measured on the 2-core CPU, drawer-open, 96 px: bare sim + render
        # 140 vs 125 steps/s in one process; `vlatrim eval` with 2 workers 192 vs 173 (benchmarks/bench_sim.py).
        # Mesa reads the variable when the process makes its first GL context; a value the user set is kept.
        os.environ.setdefault("LP_NUM_THREADS", "0")
        self._renderer = mujoco.Renderer(model, height=height, width=width)
        self.camera, self.rotate180 = camera, rotate180

    def render(self, data: Any) -> np.ndarray:
        """uint8 (H, W, 3) image of ``data``'s current state."""
        r = self._renderer
        r.update_scene(data, camera=self.camera)
        # update_scene restores the model's defaults, so these are switched off every time.
        r.scene.flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        img = r.render()  # (H, W, 3) uint8, a fresh array
        return np.ascontiguousarray(img[::-1, ::-1]) if self.rotate180 else img

    def close(self) -> None:
        """Free the GL context now (EGL complains when contexts outlive the interpreter)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
