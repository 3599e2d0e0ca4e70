"""When a fast kernel may see a tensor: plain eager mode, nothing tracing or transforming it."""

from __future__ import annotations

import torch

__all__ = ["jit_tracing", "plain_eager"]


def jit_tracing() -> bool:
    """True under ``torch.jit.trace`` (and the TorchScript ONNX exporter, which traces)."""
    return torch._C._get_tracing_state() is not None


def plain_eager(x: torch.Tensor) -> bool:
    """True when nothing is tracing or transforming ``x``: no compile/export, no TorchScript
    trace, no dispatch or function mode, no functorch wrapper, a plain tensor (not
    Fake/Functional/a subclass)."""
    return (
        not torch.compiler.is_compiling()
        and not jit_tracing()
        and type(x) is torch.Tensor
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
        # the older vmap of torch.autograd.functional (jacobian(vectorize=True), gradcheck's
        # batched gradients) wraps tensors without functorch's marker
        and not torch._C._functorch.is_legacy_batchedtensor(x)
    )
