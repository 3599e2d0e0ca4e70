"""Build the CPU kernels at install time (``pip install .``): the torch extension
``batchnorm/core/kernels/_cpu_ops*.so`` from ``csrc/``.

``csrc/kernels.cpp`` (no torch headers) is compiled once per instruction set: itself for the
baseline (x86-64 / any CPU), ``isa_avx2.cpp`` with ``-mavx2 -mfma`` and ``isa_avx512.cpp``
with the AVX-512 F/BW/VL/DQ flags, on x86-64 only; ``csrc/ops.cpp`` registers the torch ops
and picks the widest table the CPU supports when the library loads. Beside the library goes
``_cpu_ops.json``: its SHA-256 and the torch version it was built against, which the package
checks before it loads the file (a truncated, replaced or mismatched library is refused with
a message, never loaded).

Where no C++ compiler works the extension is skipped with a message and the install still
succeeds: the package then runs its torch-op kernels and says so (``batchnorm.kernels.info()``).
``BATCHNORM_NO_KERNELS=1`` skips the build on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup

EXT_NAME = "batchnorm.core.kernels._cpu_ops"
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
ISA_FLAGS = {
    "isa_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "isa_avx512.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
}
# The kernels' translation units: vectorised loops (omp simd without an OpenMP runtime).
KERNEL_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-Wno-psabi"]


def _say(msg: str) -> None:
    print(f"[batchnorm] {msg}", file=sys.stderr, flush=True)


def _extensions() -> tuple[list, dict]:
    if os.environ.get("BATCHNORM_NO_KERNELS", "").strip() in ("1", "true", "yes"):
        _say("BATCHNORM_NO_KERNELS set: not building the CPU kernels (torch-op path)")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _say(
            "torch is not importable at build time, so the CPU kernels cannot be built; "
            "install torch first and use `pip install --no-build-isolation .` "
            "(the package works without them, on torch ops)"
        )
        return [], {}

    sources = ["csrc/ops.cpp", "csrc/front.cpp", "csrc/kernels.cpp"]
    macros = []
    if X86:
        sources += ["csrc/isa_avx2.cpp", "csrc/isa_avx512.cpp"]
        macros.append(("BN_HAVE_X86_ISAS", "1"))
    ext = CppExtension(
        EXT_NAME,
        sources,
        define_macros=macros,
        # -fopenmp: at::parallel_for is inline in torch's headers, an OpenMP loop in this
        # (OpenMP) build of torch; without the flag its pragma is ignored and every kernel runs
        # on one thread. The link resolves to the libgomp.so.1 torch has already loaded.
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
        include_dirs=[os.path.abspath("csrc")],
        depends=["csrc/kernel_table.h", "csrc/kernels.cpp"],
    )

    class Build(BuildExtension):
        """torch's BuildExtension with per-file instruction-set flags, the manifest, and a
        missing compiler reported instead of failing the install."""

        def build_extensions(self) -> None:
            compile_one = self.compiler._compile

            def compile_with_isa(obj, src, ext_, cc_args, extra_postargs, pp_opts):  # type: ignore[no-untyped-def]
                name = os.path.basename(src)
                extra = list(extra_postargs)
                if name in ISA_FLAGS or name == "kernels.cpp":
                    extra += KERNEL_FLAGS + ISA_FLAGS.get(name, [])
                return compile_one(obj, src, ext_, cc_args, extra, pp_opts)

            self.compiler._compile = compile_with_isa
            self.compiler.compile = self._compile_in_parallel
            try:
                super().build_extensions()
            except Exception as e:  # any compiler or toolchain failure: the package still works
                _say(
                    f"could not build the CPU kernels ({type(e).__name__}: {e}); batchnorm will "
                    "use torch ops (same results, slower on CPU). Install a C++ compiler (g++ or "
                    "clang++) and reinstall with `pip install --no-build-isolation "
                    "--force-reinstall .` to get them"
                )
                self.extensions = []  # nothing to copy or install
                return
            for e in self.extensions:
                self._write_manifest(self.get_ext_fullpath(e.name))

        def _compile_in_parallel(  # type: ignore[no-untyped-def]
            self,
            sources,
            output_dir=None,
            macros=None,
            include_dirs=None,
            debug=False,
            extra_preargs=None,
            extra_postargs=None,
            depends=None,
        ):
            """``CCompiler.compile`` with the translation units compiled at once, one per
            core (``MAX_JOBS`` to set): the build is about 5 files of 10-30 s each."""
            cc = self.compiler
            macros, objects, extra_postargs, pp_opts, build = cc._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs
            )
            cc_args = cc._get_cc_args(pp_opts, debug, extra_preargs)
            jobs = [(obj, *build[obj]) for obj in objects if obj in build]
            jobs_env = os.environ.get("MAX_JOBS", "")
            workers = int(jobs_env) if jobs_env.isdigit() else (os.cpu_count() or 1)
            _say(f"compiling {len(jobs)} files, {min(workers, len(jobs))} at a time")
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                futures = [
                    pool.submit(cc._compile, obj, src, ext, cc_args, extra_postargs, pp_opts)
                    for obj, src, ext in jobs
                ]
                for f in futures:
                    f.result()  # the first failure raises, as the serial build would
            return objects

        def _write_manifest(self, path: str) -> None:
            import torch

            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            manifest = {
                "file": os.path.basename(path),
                "sha256": digest,
                "torch": torch.__version__,
                "isas": ["avx512", "avx2", "baseline"] if X86 else ["baseline"],
                "machine": platform.machine(),
            }
            out = os.path.join(os.path.dirname(path), "_cpu_ops.json")
            with open(out, "w") as f:
                json.dump(manifest, f, indent=1)
            _say(f"built {path} (sha256 {digest[:12]}..., torch {torch.__version__})")

        def copy_extensions_to_source(self) -> None:
            # --inplace and editable installs: the library is copied into the source tree, and
            # its manifest is written beside the copy.
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for e in self.extensions:
                inplace_file, _ = self._get_inplace_equivalent(build_py, e)
                self._write_manifest(inplace_file)

        def get_outputs(self):  # type: ignore[no-untyped-def]
            outputs = list(super().get_outputs())
            for e in self.extensions:
                outputs.append(
                    os.path.join(os.path.dirname(self.get_ext_fullpath(e.name)), "_cpu_ops.json")
                )
            return outputs

    return [ext], {"build_ext": Build.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
