"""Set-up shared by every test module, before any of them is imported.

Triton decides once per process, when it is first imported, whether ``@triton.jit`` compiles
or interprets. tests/test_kernels_triton.py runs the CUDA kernels in Triton's interpreter on CPU
tensors, and other modules import triton indirectly (keras's torch backend does), so the choice
is made here: the interpreter, unless the caller chose (``TRITON_INTERPRET=0`` keeps the kernels
compiled, which is how benchmarks/gpu_check.sh runs the CUDA tests). With the interpreter on,
the CUDA kernel set declines CUDA tensors (native torch ops run them); nothing else in the suite
runs triton kernels.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
