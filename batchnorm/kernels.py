"""Which kernels run: ``batchnorm.kernels.info()`` (the compiled CPU kernels and their
instruction set, or torch ops and why), ``get(x, axis)`` (the kernel set a tensor gets) and
``set_enabled`` (the fast kernels on or off). They live in :mod:`batchnorm.core.kernels`.
"""

from .core.kernels import enabled as enabled
from .core.kernels import get as get
from .core.kernels import info as info
from .core.kernels import set_enabled as set_enabled

__all__ = ["enabled", "get", "info", "set_enabled"]
