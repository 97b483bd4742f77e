"""vlatrim: find and remove the redundancy in the language backbone of VLA models.

The package is organised by concern (see docs/architecture.md):
``data`` -> ``models``/``train`` -> ``analyze`` -> ``prune`` -> ``train`` (recover) -> ``sim``/``bench``
-> ``study``; ``cli`` holds the thin entry points.
"""

from vlatrim.errors import VlatrimError

__version__ = "0.1.0"
__all__ = ["VlatrimError", "__version__"]
