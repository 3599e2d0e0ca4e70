"""The host side of the Triton kernel set: layouts, launch plans, and the primitives' entries.

One :class:`TritonSet` per device type: ``"cuda"`` runs the compiled kernels of ``_jit.py``;
``"cpu"`` runs the same kernels in Triton's interpreter (NumPy, for the tests). Each entry
allocates its outputs, looks up a cached :class:`Plan` for the input's shape and strides and
launches one or two kernels; nothing else runs on the host per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ... import running
from .. import plain_eager

#: Input dtypes the set takes; statistics are float32. float64 goes to the native set.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Largest input: every offset, masked lanes included, stays below 2**31 (int32 indexing).
MAX_NUMEL = 2**29

_F32, _F64 = torch.float32, torch.float64


@dataclass(frozen=True)
class Tuning:
    """Launch shapes; the defaults are the H100/H200 design's starting point (docs/gpu.md).

    Attributes:
        programs_per_sm: reduction programs wanted per multiprocessor; each channel (block)
            is split over ``ceil(sm_count * programs_per_sm / units)`` programs.
        tile: values per tile, one loop step of a program.
        min_run: the shortest contiguous run (values) a planes tile reads along HxW.
        max_block_c: channels per rows tile (channels-last, 2-D).
        min_tiles: tiles per reduction program at least, where the input has enough.
        max_splits: programs per channel at most (the finalize merges them in one tile).
        reduce_warps, elemt_warps: ``num_warps`` of the reduction and elementwise kernels.
        final_tile: ``BLOCK_S * BLOCK_C`` of the kernels that merge the partials.
        sm_count: multiprocessors to plan for; None reads the device (CPU: 2).
    """

    programs_per_sm: int = 8
    tile: int = 2048
    min_run: int = 64
    max_block_c: int = 128
    min_tiles: int = 4
    max_splits: int = 512
    reduce_warps: int = 4
    elemt_warps: int = 4
    final_tile: int = 2048
    sm_count: int | None = None


class Plan(NamedTuple):
    """How one (shape, strides, axis) is cut into programs (see ``_jit.py``)."""

    planes: bool  # inner > 1 (NC* contiguous) or rows of C channels
    outer: int  # N (planes) or M rows
    C: int
    inner: int
    block_a: int  # BLOCK_N or BLOCK_M
    block_b: int  # BLOCK_I or BLOCK_C
    even_i: bool  # planes: inner % BLOCK_I == 0
    it: int  # planes: tile columns per row of tiles
    tiles: int  # planes: tiles per channel; rows: row tiles
    tps: int  # planes: tiles per split; rows: rows per split
    splits: int  # S, programs per channel (block)
    programs: int  # units * S
    k_stride: int  # stride of the channel axis: K of channel c is x[c * k_stride]
    fin_s: int  # BLOCK_S of the finalize kernels
    fin_c: int  # BLOCK_C of the finalize kernels
    # Launch arguments, made once per plan (host time per call):
    red_args: tuple[int, ...]  # geometry arguments of the reduction kernels
    elt_args: tuple[int, ...]  # geometry arguments of the elementwise kernels
    blocks: dict[str, int | bool]  # the tile constexprs
    kw: dict[tuple[Any, ...], dict[str, Any]]  # keyword arguments per flag set, filled on use


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _run_block(inner: int, tile: int, min_run: int) -> int:
    """The power of two ``b`` (``min_run <= b <= tile``, or ``pow2(inner)`` if smaller) that
    wastes fewest lanes on ``cdiv(inner, b) * b``; the largest within 3% of the best."""
    top = min(_pow2(inner), tile)
    cands = []
    b = top
    while b >= min(min_run, top) and b >= 1:
        cands.append((inner / (_cdiv(inner, b) * b), b))
        b //= 2
    best = max(e for e, _ in cands)
    return max(b for e, b in cands if e >= best - 0.03)


def make_plan(geo: tuple[int, int, int], tuning: Tuning, sm_count: int) -> Plan:
    """The launch plan of a ``(outer, C, inner)`` layout (``geometry``)."""
    outer, C, inner = geo
    t = tuning
    planes = inner > 1
    if planes:
        block_b = _run_block(inner, t.tile, t.min_run)  # BLOCK_I
        block_a = max(1, min(t.tile // block_b, _pow2(outer)))  # BLOCK_N
        it = _cdiv(inner, block_b)
        tiles = _cdiv(outer, block_a) * it
        units = C
    else:
        block_b = min(_pow2(C), t.max_block_c)  # BLOCK_C
        block_a = max(1, min(t.tile // block_b, _pow2(outer)))  # BLOCK_M
        it = 1
        tiles = _cdiv(outer, block_a)
        units = _cdiv(C, block_b)
    splits = _cdiv(sm_count * t.programs_per_sm, units)
    splits = min(splits, t.max_splits, max(1, tiles // max(1, t.min_tiles)))
    # A program's float32 count stays exact: at most 2**23 values per program.
    splits = max(splits, 1, _cdiv(tiles * block_a * block_b, 2**23))
    tps = _cdiv(tiles, splits)
    splits = _cdiv(tiles, tps)  # no empty split
    fin_s = _pow2(splits)
    fin_c = max(1, min(_pow2(C), t.final_tile // fin_s))
    even_i = planes and inner % block_b == 0
    programs = units * splits
    if planes:
        red_args: tuple[int, ...] = (outer, C, inner, it, tps, tiles, splits)
        elt_args: tuple[int, ...] = (outer, C, inner, it, tps, tiles, programs)
        vec = min(inner & -inner, 16, block_b)  # the largest power of two dividing inner
        blocks: dict[str, int | bool] = {
            "BLOCK_N": block_a,
            "BLOCK_I": block_b,
            "EVEN_I": even_i,
            "VEC": vec,
        }
    else:
        tps *= block_a  # rows per split
        red_args, elt_args = (outer, C, tps, splits), (outer, C, tps, programs)
        blocks = {"BLOCK_M": block_a, "BLOCK_C": block_b}
    return Plan(
        planes=planes,
        outer=outer,
        C=C,
        inner=inner,
        block_a=block_a,
        block_b=block_b,
        even_i=even_i,
        it=it,
        tiles=tiles,
        tps=tps,
        splits=splits,
        programs=programs,
        k_stride=inner,  # planes: x[0, c, 0] = x[c * inner]; rows: x[0, c] = x[c]
        fin_s=fin_s,
        fin_c=fin_c,
        red_args=red_args,
        elt_args=elt_args,
        blocks=blocks,
        kw={},
    )


# (shape, strides, axis) -> (outer, C, inner) or None.
_GEOMETRY: dict[tuple[Any, ...], tuple[int, int, int] | None] = {}


def geometry(x: Tensor, axis: int) -> tuple[int, int, int] | None:
    """``(outer, C, inner)`` of a layout the kernels read, or None (``axis`` non-negative).

    ``inner > 1``: contiguous NC* (planes); ``inner == 1``: rows of C channels (channels-last,
    channels-last-3d, 2-D, the channel axis last)."""
    key = (x.shape, x.stride(), axis)
    try:
        return _GEOMETRY[key]
    except KeyError:
        pass
    C = x.shape[axis]
    geo: tuple[int, int, int] | None = None
    if x.is_contiguous():
        geo = (math.prod(x.shape[:axis]), C, math.prod(x.shape[axis + 1 :]))
    elif x.stride(axis) == 1 and x.movedim(axis, -1).is_contiguous():
        geo = (x.numel() // C, C, 1)
    if len(_GEOMETRY) > 1024:
        _GEOMETRY.clear()
    _GEOMETRY[key] = geo
    return geo


# --------------------------------------------------------------------------- loading

_JIT: dict[str, Any] = {}


def load_jit() -> ModuleType:
    """The kernels (``_jit.py``), importing triton on the first call.

    Triton decides once per process, when it is imported, whether ``@triton.jit`` compiles or
    interprets (``TRITON_INTERPRET=1``): :func:`interpreted` says which this process got.

    Raises:
        ImportError: triton is missing or the kernels failed to load (the cause is chained).
    """
    got = _JIT.get("module")
    if got is None:
        try:
            from . import _jit

            got = _jit
        except Exception as e:  # the sets decline; load_error() says why
            got = e
        _JIT["module"] = got
    if isinstance(got, BaseException):
        raise ImportError(f"the Triton kernels could not be loaded: {got!r}") from got
    return got


def interpreted() -> bool:
    """Whether the loaded kernels run in Triton's interpreter (False if none loaded)."""
    got = _JIT.get("module")
    if got is None or isinstance(got, BaseException):
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(got.stats_planes, InterpretedFunction)


def load_error() -> str | None:
    """Why the kernels did not load (None: loaded, or not tried yet)."""
    got = _JIT.get("module")
    return repr(got) if isinstance(got, BaseException) else None


# --------------------------------------------------------------------------- helpers


def _f32(v: float) -> float:
    """``v`` rounded to float32, as torch rounds a Python scalar combined with a float32
    tensor (and as the kernels receive it: exactly)."""
    r = _F32_CACHE.get(v)
    if r is None:
        if len(_F32_CACHE) > 1024:
            _F32_CACHE.clear()
        r = _F32_CACHE[v] = float(np.float32(v))
    return r


_F32_CACHE: dict[float, float] = {}


def _count_scalars(count: int) -> tuple[float, float]:
    """``(m, 1 / m)`` as float32 values: the count as torch converts it, and the reciprocal
    torch on CUDA multiplies by to divide by it (computed in float32)."""
    one = np.float32(1.0)
    return _f32(count), (float(one / np.float32(count)) if count > 0 else 0.0)


def _vec(v: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A contiguous (C,) vector, in ``dtype`` if given (itself when it already is)."""
    if dtype is not None and v.dtype != dtype:
        v = v.to(dtype)
    return v if v.is_contiguous() else v.contiguous()


def _like(t: Tensor, x: Tensor) -> Tensor:
    """``t`` in ``x``'s dtype and memory layout (the kernels index both with x's plan)."""
    if t.dtype == x.dtype and t.stride() == x.stride():
        return t
    return torch.empty_like(x).copy_(t)


class TritonSet:
    """The primitives of :mod:`batchnorm.core.kernels` on Triton kernels, for one device type.

    Args:
        device_type: ``"cuda"`` (compiled kernels) or ``"cpu"`` (Triton's interpreter).
        tuning: launch shapes (:class:`Tuning`).
    """

    def __init__(self, device_type: str, tuning: Tuning | None = None) -> None:
        if device_type not in ("cuda", "cpu"):
            raise ValueError(
                f"device_type must be 'cuda' (compiled kernels) or 'cpu' (Triton's interpreter), "
                f"got {device_type!r}"
            )
        self.device_type = device_type
        self.interpret = device_type == "cpu"
        self.tuning = tuning or Tuning()
        # torch on CUDA divides by a host scalar as a multiplication by its float32 reciprocal;
        # on CPU it divides. The kernels build the backward's vectors the same way.
        self.rcp = device_type == "cuda"
        self._jit: Any = None
        self._loaded: bool | None = None
        self._plans: dict[tuple[Any, ...], Plan] = {}
        self._device_ok: dict[int, bool] = {}
        self._sm: dict[int, int] = {}

    # ----------------------------------------------------------------- choosing

    def loaded(self) -> bool:
        """Whether the kernels load (importing triton on the first call) in this set's mode:
        interpreted for ``"cpu"``, compiled for ``"cuda"`` (a CUDA tensor is never run in the
        interpreter, which copies every argument to the host and back)."""
        if self._loaded is None:
            try:
                self._jit = load_jit()
                self._loaded = interpreted() == self.interpret
            except ImportError:
                self._loaded = False
        return self._loaded

    def _require(self) -> Any:
        """The kernels, for an entry called without :meth:`supports` first."""
        if not self.loaded():
            raise RuntimeError(
                f"the Triton kernels cannot run on {self.device_type!r} in this process "
                f"({load_error() or ('interpreted' if interpreted() else 'compiled')}): call "
                "supports() first and use the native set where it is False"
            )
        return self._jit

    def _device_supported(self, x: Tensor) -> bool:
        """CUDA: the input is on the current device (Triton launches there) of compute
        capability 8.0 or more (bfloat16 arithmetic)."""
        if not self.interpret:
            index = x.device.index
            if index != torch.cuda.current_device():
                return False
            ok = self._device_ok.get(index)
            if ok is None:
                ok = self._device_ok[index] = torch.cuda.get_device_capability(index) >= (8, 0)
            return ok
        return True

    def supports(self, x: Tensor, axis: int) -> bool:
        """A non-empty float32/bfloat16/float16 tensor of this device type with at most
        :data:`MAX_NUMEL` values in a layout the kernels read, in plain eager mode (no
        compile/export, torch.func or subclass: those get the native torch ops), once the
        kernels load."""
        return (
            x.device.type == self.device_type
            and x.dtype in DTYPES
            and 0 < x.numel() <= MAX_NUMEL
            and plain_eager(x)
            and geometry(x, axis) is not None
            and self._device_supported(x)
            and self.loaded()
        )

    def plan(self, x: Tensor, axis: int) -> Plan:
        """The cached launch plan of ``x``'s shape, strides and channel axis."""
        key = (x.shape, x.stride(), axis, x.device.index)
        p = self._plans.get(key)
        if p is None:
            geo = geometry(x, axis)
            assert geo is not None, "plan() of an input supports() declines"
            p = make_plan(geo, self.tuning, self._sm_count(x))
            if len(self._plans) > 1024:
                self._plans.clear()
            self._plans[key] = p
        return p

    def _sm_count(self, x: Tensor) -> int:
        if self.tuning.sm_count is not None:
            return self.tuning.sm_count
        if self.interpret:
            return 2
        index = x.device.index or 0
        n = self._sm.get(index)
        if n is None:
            n = self._sm[index] = torch.cuda.get_device_properties(index).multi_processor_count
        return n

    def _kw(self, p: Plan, kind: str, *flags: bool) -> dict[str, Any]:
        """The keyword arguments (constexprs, launch options) of one kernel kind and flag set
        for plan ``p``, made on first use and kept in the plan."""
        key = (kind, *flags)
        kw = p.kw.get(key)
        if kw is None:
            t = self.tuning
            if kind == "red":
                kw = {**p.blocks, "FINAL": flags[0], "num_warps": t.reduce_warps}
            elif kind == "fin":
                kw = {"BLOCK_S": p.fin_s, "BLOCK_C": p.fin_c, "num_warps": 4}
            else:
                names = ("STATS", "HAS_W", "HAS_B") if kind == "norm" else ("STATS", "HAS_W")
                kw = {**p.blocks, **dict(zip(names, flags)), "INTERPRET": self.interpret}
                if kind == "dx":
                    kw["RCP"] = self.rcp
                kw.update(num_warps=t.elemt_warps, enable_fp_fusion=False)
            if kind in ("red", "fin"):
                kw["enable_fp_fusion"] = True  # explicit: Triton 3.9 warns when it is left unset
            p.kw[key] = kw
        return kw

    # ----------------------------------------------------------------- statistics

    def stats(self, x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        """Per-channel mean (float64, eq. 1) and biased variance (float32, eq. 2).

        Per-lane Welford of ``x - K`` (``K`` one sample of the channel) in float32, the lanes
        merged by Chan's formula (the mean's sum in float64) and the programs in float64, all
        by fixed-order sums: a constant channel gives ``mean == K`` and ``var == 0`` exactly.
        """
        p = self.plan(x, axis)
        jit = self._jit or self._require()
        mean = torch.empty(p.C, dtype=_F64, device=x.device)
        var = torch.empty(p.C, dtype=_F32, device=x.device)
        final = p.splits == 1
        ws = mean if final else torch.empty(3 * p.splits * p.C, dtype=_F64, device=x.device)
        kernel = jit.stats_planes if p.planes else jit.stats_rows
        kernel[(p.programs,)](x, ws, mean, var, *p.red_args, **self._kw(p, "red", final))
        if not final:
            jit.stats_final[(_cdiv(p.C, p.fin_c),)](
                ws, x, mean, var, p.C, p.splits, p.k_stride, **self._kw(p, "fin")
            )
        return mean, var

    # ----------------------------------------------------------------- normalize

    def _normalize(
        self,
        x: Tensor,
        axis: int,
        mean: Tensor,
        a: Tensor,
        b: Tensor | None,
        w: Tensor | None,
        eps: float,
        stats: bool,
    ) -> tuple[Tensor, Tensor | None]:
        p = self.plan(x, axis)
        jit = self._jit or self._require()
        y = torch.empty_like(x)
        inv = torch.empty(p.C, dtype=_F32, device=x.device) if stats else mean
        kernel = jit.normalize_planes if p.planes else jit.normalize_rows
        kernel[(p.programs,)](
            x,
            y,
            mean,
            a,
            mean if b is None else b,
            mean if w is None else w,
            inv,
            eps,
            *p.elt_args,
            **self._kw(p, "norm", stats, w is not None, b is not None),
        )
        return y, (inv if stats else None)

    def normalize(self, x: Tensor, axis: int, mean: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``y = ((x - hi) - lo) * scale + shift`` per channel (eq. 3-4), in x's dtype and
        layout; ``mean`` (float64) split into ``hi + lo`` in float32."""
        y, _ = self._normalize(
            x, axis, _vec(mean, _F64), _vec(scale, _F32), _vec(shift, _F32), None, 0.0, False
        )
        return y

    def normalize_stats(
        self,
        x: Tensor,
        axis: int,
        mean: Tensor,
        var: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        """``(y, inv_std)``: :meth:`normalize` with ``inv_std = rsqrt(var + eps)``,
        ``scale = weight * inv_std`` and ``shift = bias`` built in the kernel, rounded as the
        core's torch ops round them. ``mean`` and ``var`` may be of any float dtype (the
        running buffers in evaluation)."""
        y, inv = self._normalize(
            x,
            axis,
            _vec(mean),
            _vec(var),
            None if bias is None else _vec(bias),
            None if weight is None else _vec(weight),
            _f32(eps),
            True,
        )
        assert inv is not None
        return y, inv

    # ----------------------------------------------------------------- backward

    def backward_reduce(
        self, dy: Tensor, x: Tensor, axis: int, mean: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``sum(dy)`` and ``sum(dy * ((x - hi) - lo))`` per channel, float32: per-lane
        float32 sums, a fixed-order float32 tree per program, float64 across programs."""
        p = self.plan(x, axis)
        jit = self._jit or self._require()
        dy = _like(dy, x)
        mean = _vec(mean, _F64)
        s1 = torch.empty(p.C, dtype=_F32, device=x.device)
        s2 = torch.empty(p.C, dtype=_F32, device=x.device)
        final = p.splits == 1
        ws = mean if final else torch.empty(2 * p.splits * p.C, dtype=_F64, device=x.device)
        kernel = jit.sums_planes if p.planes else jit.sums_rows
        kernel[(p.programs,)](dy, x, mean, ws, s1, s2, *p.red_args, **self._kw(p, "red", final))
        if not final:
            jit.sums_final[(_cdiv(p.C, p.fin_c),)](ws, s1, s2, p.C, p.splits, **self._kw(p, "fin"))
        return s1, s2

    def _dx(
        self,
        dy: Tensor,
        x: Tensor,
        axis: int,
        mean: Tensor,
        a: Tensor,
        b: Tensor,
        c: Tensor,
        w: Tensor | None,
        count: int,
        stats: bool,
    ) -> Tensor:
        p = self.plan(x, axis)
        jit = self._jit or self._require()
        dy = _like(dy, x)
        dx = torch.empty_like(x)
        cnt, rcp = _count_scalars(count)
        kernel = jit.dx_planes if p.planes else jit.dx_rows
        kernel[(p.programs,)](
            dy,
            x,
            dx,
            mean,
            a,
            b,
            c,
            mean if w is None else w,
            cnt,
            rcp,
            *p.elt_args,
            **self._kw(p, "dx", stats, w is not None),
        )
        return dx

    def backward_elemt(
        self,
        dy: Tensor,
        x: Tensor,
        axis: int,
        mean: Tensor,
        k: Tensor,
        mean_dy: Tensor,
        proj: Tensor,
    ) -> Tensor:
        """``dx = (dy - mean_dy - ((x - hi) - lo) * proj) * k`` per channel (eq. 12)."""
        return self._dx(
            dy,
            x,
            axis,
            _vec(mean, _F64),
            _vec(k, _F32),
            _vec(mean_dy, _F32),
            _vec(proj, _F32),
            None,
            1,
            False,
        )

    def backward_elemt_stats(
        self,
        dy: Tensor,
        x: Tensor,
        axis: int,
        mean: Tensor,
        inv_std: Tensor,
        weight: Tensor | None,
        sum_dy: Tensor,
        sum_dy_xmu: Tensor,
        count: int,
    ) -> Tensor:
        """:meth:`backward_elemt` with ``k = weight * inv_std``, ``mean_dy = sum_dy / m``,
        ``proj = sum_dy_xmu / m * inv_std^2`` built in the kernel, rounded as
        ``_native.dx_coefficients``'s torch ops round them on this device."""
        return self._dx(
            dy,
            x,
            axis,
            _vec(mean, _F64),
            _vec(inv_std, _F32),
            _vec(sum_dy, _F32),
            _vec(sum_dy_xmu, _F32),
            None if weight is None else _vec(weight),
            count,
            True,
        )

    # ----------------------------------------------------------------- running update

    def running_update(
        self,
        running_mean: Tensor,
        running_var: Tensor,
        mean: Tensor,
        var: Tensor,
        count: int,
        momentum: float | Tensor | None,
        num_batches_tracked: Tensor | None,
        store_unbiased: bool,
        skipped_updates: Tensor | None,
    ) -> None:
        """``running.native_running_update`` in one kernel launch where :meth:`_takes` the
        buffers (the same bits), else the native torch ops."""
        args = (running_mean, running_var, mean, var, count, momentum)
        counters = (num_batches_tracked, store_unbiased, skipped_updates)
        if not self._takes(*args, num_batches_tracked, skipped_updates):
            running.native_running_update(*args, *counters)
            return
        cumulative = momentum is None
        f = 0.0 if cumulative else _f32(float(momentum))  # type: ignore[arg-type]
        g = 0.0 if cumulative else _f32(1.0 - float(momentum))  # type: ignore[arg-type]
        bessel = _f32(count / (count - 1)) if store_unbiased and count > 1 else 1.0
        nbt = num_batches_tracked if num_batches_tracked is not None else mean
        skip = skipped_updates if skipped_updates is not None else mean
        (self._jit or self._require()).running_update[(1,)](
            running_mean,
            running_var,
            mean,
            var,
            nbt,
            skip,
            mean.numel(),
            f,
            g,
            bessel,
            CUMULATIVE=cumulative,
            HAS_NBT=num_batches_tracked is not None,
            HAS_SKIP=skipped_updates is not None,
            BLOCK=min(1024, _pow2(mean.numel())),
            num_warps=4,
            enable_fp_fusion=False,
        )
        for t in (running_mean, running_var, num_batches_tracked, skipped_updates):
            if t is not None:
                torch.autograd.graph.increment_version(t)

    def _takes(
        self,
        running_mean: Tensor,
        running_var: Tensor,
        mean: Tensor,
        var: Tensor,
        count: int,
        momentum: object,
        num_batches_tracked: Tensor | None,
        skipped_updates: Tensor | None,
    ) -> bool:
        """Plain eager, float32 contiguous buffers on this device, a float64 mean and float32
        variance of their length, a Python (or no) momentum, int64 scalar counters."""

        def flat(t: Tensor, dtype: torch.dtype, n: int) -> bool:
            return (
                type(t) is Tensor
                and t.device == running_mean.device
                and t.dtype == dtype
                and t.numel() == n
                and t.is_contiguous()
            )

        c = running_mean.numel()
        return (
            running_mean.device.type == self.device_type
            and plain_eager(running_mean)
            and (momentum is None or type(momentum) in (float, int))
            and c > 0
            and flat(running_mean, _F32, c)
            and flat(running_var, _F32, c)
            and flat(mean, _F64, c)
            and flat(var, _F32, c)
            and (num_batches_tracked is None or flat(num_batches_tracked, torch.int64, 1))
            and (skipped_updates is None or flat(skipped_updates, torch.int64, 1))
            and (momentum is not None or num_batches_tracked is not None)
            and (self.interpret or running_mean.device.index == torch.cuda.current_device())
            and self.loaded()
        )


__all__ = [
    "DTYPES",
    "MAX_NUMEL",
    "Plan",
    "TritonSet",
    "Tuning",
    "geometry",
    "load_jit",
    "make_plan",
]
