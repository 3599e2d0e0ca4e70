"""Batch normalization for ``torch.func``: pure, with the running statistics returned.

:func:`batch_norm` takes the arguments of :func:`batchnorm.functional.batch_norm` in its order
and returns ``(y, new_running_mean, new_running_var)`` instead of updating buffers;
:func:`functional_call` runs a whole model that way. See ``docs/variants.md``.
"""

from .core.func import batch_norm as batch_norm
from .tools.functional_call import functional_call as functional_call

__all__ = ["batch_norm", "functional_call"]
