# Triton kernels take Triton-typed arguments that Python annotations cannot state (an annotation
# other than tl.constexpr changes how Triton specializes the argument), and triton has no stubs.
# mypy: disable-error-code="no-untyped-def,untyped-decorator"
"""The Triton kernels of the batch-norm primitives (``@triton.jit``; the host side is ``_set.py``).

Imported on the first call that needs them (``_set.load_jit``). Compiled for CUDA, or run by
Triton's interpreter on CPU tensors where the process imported triton with
``TRITON_INTERPRET=1`` (the tests). Equation numbers refer to ``docs/math.md``.

Two layouts, as ``(outer, C, inner)`` (``_set.geometry``):

- *planes* (``inner > 1``, contiguous NC*): channel ``c`` is ``outer`` runs of ``inner``
  contiguous values at ``n * C * inner + c * inner``. A program owns one channel and a range
  of ``(BLOCK_N, BLOCK_I)`` tiles of its ``(outer, inner)`` matrix (tile ``t`` is rows
  ``t // IT`` and columns ``t % IT`` of the tile grid). ``VEC``, the largest power of two
  up to 16 dividing ``inner``, tells the compiler that runs start aligned (16-byte loads for
  14x14 = 196 = 4 x 49 too).
- *rows* (``inner == 1``: channels-last, 2-D, Keras ``axis=-1``): ``M`` rows of ``C``
  channels. A program owns ``BLOCK_C`` channels and a range of ``RPS`` rows, read as
  ``(BLOCK_M, BLOCK_C)`` tiles.

Every reduction is split over ``S`` programs per channel (block); program ``pid`` is split
``pid // units`` of unit ``pid % units``. Each lane of a program keeps its own partial
(Welford ``(count, mean, M2)`` for the statistics, plain sums for the backward); the lanes are
merged by fixed-order tree sums (``tl.sum``; the mean's in float64) and the programs'
partials, stored in float64, by a second small kernel the same way in float64: no atomics, so
a result does not depend on scheduling.
The elementwise kernels walk the same decomposition in reverse order, so the first tiles they
read are the last ones the reduction read (still in L2).

The elementwise kernels are launched with ``enable_fp_fusion=False``: every product and sum
is rounded as the torch ops of the core's composition round it, so the entries that build the
per-channel vectors in the kernel give the bits of the core building them with torch ops.
"""

from __future__ import annotations

import triton
import triton.language as tl

# --------------------------------------------------------------------------- helpers


@triton.jit
def _merge_cols(cnt, mean, m2):
    """Merge float64 ``(count, mean, M2)`` partials down each column of (R, C) tiles.

    The k-way form of Chan's formula (eq. 19-22), as two fixed-order tree sums::

        n = sum n_l    mean = sum n_l * mean_l / n    M2 = sum M2_l + sum n_l * (mean_l - mean)^2

    Every term of the second sum is non-negative: nothing cancels. Empty partials add 0.
    """
    n = tl.sum(cnt, 0)  # (C,)
    mu = tl.sum(cnt * mean, 0) / tl.maximum(n, 1.0)
    dev = mean - mu[None, :]
    return n, mu, tl.sum(m2 + cnt * dev * dev, 0)


@triton.jit
def _lanes_cols(cnt, mean, m2):
    """:func:`_merge_cols` of a program's float32 lane partials, (R, C) -> (C,): the mean's
    sum in float64 (returned float64), the count and M2 in float32 (all-float64 lanes would
    double the registers the whole kernel holds)."""
    n = tl.sum(cnt, 0)  # (C,) float32, exact (integers below 2**24)
    mu = tl.sum((cnt * mean).to(tl.float64), 0) / tl.maximum(n, 1.0).to(tl.float64)
    dev = (mean.to(tl.float64) - mu[None, :]).to(tl.float32)
    return n, mu, tl.sum(m2 + cnt * dev * dev, 0)


@triton.jit
def _lanes_all(cnt, mean, m2):
    """:func:`_lanes_cols` of a 1-D run of lane partials into one ``(count, mean, M2)``."""
    n = tl.sum(cnt, 0)
    mu = tl.sum((cnt * mean).to(tl.float64), 0) / tl.maximum(n, 1.0).to(tl.float64)
    dev = (mean.to(tl.float64) - mu).to(tl.float32)
    return n, mu, tl.sum(m2 + cnt * dev * dev, 0)


@triton.jit
def _split_mean(mean_ptr, offs, mask):
    """The float64 mean as ``hi + lo`` in float32 (``_native.center``): ``(x - hi) - lo``
    keeps the digits of a mean much larger than the std (§9 of docs/math.md)."""
    m = tl.load(mean_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    hi = m.to(tl.float32)
    lo = (m - hi.to(tl.float64)).to(tl.float32)
    return hi, lo


@triton.jit
def _norm_vectors(
    offs,
    mask,
    mean_ptr,
    a_ptr,
    b_ptr,
    w_ptr,
    inv_ptr,
    eps,
    inv_mask,
    STATS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
):
    """Per-channel ``(hi, lo, scale, shift)`` of the normalize map (eq. 3-4).

    ``STATS``: ``a`` is the variance and ``b`` the bias, ``inv_std = rsqrt(var + eps)``,
    ``scale = weight * inv_std``, ``shift = bias`` (0 without one), and ``inv_std`` is stored
    where ``inv_mask``; else ``a`` and ``b`` are the given ``scale`` and ``shift``.
    """
    hi, lo = _split_mean(mean_ptr, offs, mask)
    if STATS:
        var = tl.load(a_ptr + offs, mask=mask, other=1.0).to(tl.float32)
        inv = tl.math.rsqrt(var + eps)
        tl.store(inv_ptr + offs, inv, mask=inv_mask)
        scale = inv
        if HAS_W:
            scale = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32) * inv
        if HAS_B:
            shift = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            shift = tl.zeros_like(inv)
    else:
        scale = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return hi, lo, scale, shift


@triton.jit
def _dx_vectors(
    offs,
    mask,
    mean_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    w_ptr,
    cnt,
    rcp,
    STATS: tl.constexpr,
    HAS_W: tl.constexpr,
    RCP: tl.constexpr,
):
    """Per-channel ``(hi, lo, k, mean_dy, proj)`` of eq. 12's ``dx``.

    ``STATS``: ``a, b, c`` are ``inv_std, sum_dy, sum_dy_xmu`` and the vectors are built as
    ``_native.dx_coefficients`` builds them: ``k = weight * inv_std``, ``mean_dy = sum_dy / m``,
    ``proj = sum_dy_xmu / m * inv_std * inv_std``, where ``/ m`` is ``* rcp`` with the float32
    reciprocal when ``RCP`` (torch on CUDA divides by a host scalar that way) and a true
    division by ``cnt`` (the float32 ``m``) otherwise (torch on CPU). Else ``a, b, c`` are the
    given ``k, mean_dy, proj``.
    """
    hi, lo = _split_mean(mean_ptr, offs, mask)
    if STATS:
        inv = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s_dy = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s_dyx = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        k = inv
        if HAS_W:
            k = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32) * inv
        if RCP:
            mean_dy = s_dy * rcp
            proj = s_dyx * rcp
        else:
            mean_dy = s_dy / cnt
            proj = s_dyx / cnt
        proj = proj * inv
        proj = proj * inv
    else:
        k = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean_dy = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        proj = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return hi, lo, k, mean_dy, proj


# --------------------------------------------------------------------------- statistics


@triton.jit
def stats_planes(
    x_ptr,
    ws_ptr,
    mean_ptr,
    var_ptr,
    N,
    C,
    inner,
    IT,
    TPS,
    T,
    S,
    BLOCK_N: tl.constexpr,
    BLOCK_I: tl.constexpr,
    EVEN_I: tl.constexpr,
    VEC: tl.constexpr,
    FINAL: tl.constexpr,
):
    """Per-lane Welford of ``d = x - K`` over one channel's tiles ``[s * TPS, (s+1) * TPS)``;
    ``K = x[0, c, 0]`` (a sample of the channel: ``x - K`` is exact where x is near K and
    the lanes' means stay small). Writes the program's ``(count, mean_d, M2)`` to
    ``ws[0..2, s, c]`` (float64), or with ``FINAL`` (one split) the channel's mean and biased
    var."""
    pid = tl.program_id(0)
    c = pid % C
    s = pid // C
    base = c * inner
    K = tl.load(x_ptr + base).to(tl.float32)
    rn = tl.arange(0, BLOCK_N)
    ri = tl.arange(0, BLOCK_I)
    row_stride = tl.multiple_of(C * inner, VEC)  # VEC divides inner: vector loads
    tile = rn[:, None] * row_stride + ri[None, :]  # (BLOCK_N, BLOCK_I) offsets in a tile
    cnt = tl.zeros([BLOCK_N, BLOCK_I], dtype=tl.float32)
    mean = tl.zeros([BLOCK_N, BLOCK_I], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_N, BLOCK_I], dtype=tl.float32)
    t0 = s * TPS
    t1 = tl.minimum(t0 + TPS, T)
    for t in range(t0, t1):
        # Tile t: rows n0.. of the tile grid's row t // IT, columns i0.. of its column t % IT.
        # (Inline, as in every loop here: no helper call and only scalar index arithmetic.)
        n0 = (t // IT) * BLOCK_N
        i0 = (t % IT) * BLOCK_I
        if EVEN_I:  # inner is a multiple of BLOCK_I: only the rows need a mask
            mask = (rn < N - n0)[:, None] & (ri < BLOCK_I)[None, :]
        else:
            mask = (rn < N - n0)[:, None] & (ri < tl.multiple_of(inner - i0, VEC))[None, :]
        start = tl.multiple_of(base + n0 * row_stride + i0, VEC)
        x = tl.load(x_ptr + start + tile, mask=mask, other=0.0)
        # Welford per lane on d = x - K; masked lanes keep their partial.
        d = x.to(tl.float32) - K
        cnt += mask.to(tl.float32)
        delta = d - mean
        mean += tl.where(mask, delta / tl.maximum(cnt, 1.0), 0.0)
        m2 += tl.where(mask, delta * (d - mean), 0.0)
    cnt, mean, m2 = _lanes_all(
        tl.reshape(cnt, [BLOCK_N * BLOCK_I]),
        tl.reshape(mean, [BLOCK_N * BLOCK_I]),
        tl.reshape(m2, [BLOCK_N * BLOCK_I]),
    )  # () float32, float64, float32
    if FINAL:
        tl.store(mean_ptr + c, K.to(tl.float64) + mean)
        tl.store(var_ptr + c, (m2.to(tl.float64) / cnt.to(tl.float64)).to(tl.float32))
    else:
        tl.store(ws_ptr + s * C + c, cnt)
        tl.store(ws_ptr + (S + s) * C + c, mean)
        tl.store(ws_ptr + (2 * S + s) * C + c, m2)


@triton.jit
def stats_rows(
    x_ptr,
    ws_ptr,
    mean_ptr,
    var_ptr,
    M,
    C,
    RPS,
    S,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    FINAL: tl.constexpr,
):
    """:func:`stats_planes` for rows of C channels: ``BLOCK_C`` channels, rows
    ``[s * RPS, (s+1) * RPS)``, ``K = x[0, c]``."""
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BLOCK_C)
    cb = pid % CB
    s = pid // CB
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    cmask = cols < C
    K = tl.load(x_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    rm = tl.arange(0, BLOCK_M)
    tile = rm[:, None] * C + cols[None, :]  # (BLOCK_M, BLOCK_C)
    cnt = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    r0 = s * RPS
    r1 = tl.minimum(r0 + RPS, M)
    for start in range(r0, r1, BLOCK_M):
        mask = (rm < r1 - start)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + start * C + tile, mask=mask, other=0.0)
        d = x.to(tl.float32) - K[None, :]
        cnt += mask.to(tl.float32)
        delta = d - mean
        mean += tl.where(mask, delta / tl.maximum(cnt, 1.0), 0.0)
        m2 += tl.where(mask, delta * (d - mean), 0.0)
    cnt, mean, m2 = _lanes_cols(cnt, mean, m2)  # (BLOCK_C,) float32, float64, float32
    if FINAL:
        tl.store(mean_ptr + cols, K.to(tl.float64) + mean, mask=cmask)
        var = m2.to(tl.float64) / tl.maximum(cnt, 1.0).to(tl.float64)
        tl.store(var_ptr + cols, var.to(tl.float32), mask=cmask)
    else:
        tl.store(ws_ptr + s * C + cols, cnt, mask=cmask)
        tl.store(ws_ptr + (S + s) * C + cols, mean, mask=cmask)
        tl.store(ws_ptr + (2 * S + s) * C + cols, m2, mask=cmask)


@triton.jit
def stats_final(
    ws_ptr,
    x_ptr,
    mean_ptr,
    var_ptr,
    C,
    S,
    k_stride,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Merge the ``S`` float64 partials of ``BLOCK_C`` channels (:func:`_merge_cols`):
    ``mean = K + mean_d`` (float64, eq. 1), ``var = M2 / m`` (biased, eq. 2, rounded once)."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rs = tl.arange(0, BLOCK_S)
    mask = (rs < S)[:, None] & cmask[None, :]
    offs = rs[:, None] * C + cols[None, :]  # (BLOCK_S, BLOCK_C)
    cnt = tl.load(ws_ptr + offs, mask=mask, other=0.0)
    mean = tl.load(ws_ptr + S * C + offs, mask=mask, other=0.0)
    m2 = tl.load(ws_ptr + 2 * S * C + offs, mask=mask, other=0.0)
    cnt, mean, m2 = _merge_cols(cnt, mean, m2)  # (BLOCK_C,)
    K = tl.load(x_ptr + cols * k_stride, mask=cmask, other=0.0).to(tl.float64)
    tl.store(mean_ptr + cols, K + mean, mask=cmask)
    tl.store(var_ptr + cols, (m2 / tl.maximum(cnt, 1.0)).to(tl.float32), mask=cmask)


# --------------------------------------------------------------------------- backward sums


@triton.jit
def sums_planes(
    dy_ptr,
    x_ptr,
    mean_ptr,
    ws_ptr,
    s1_ptr,
    s2_ptr,
    N,
    C,
    inner,
    IT,
    TPS,
    T,
    S,
    BLOCK_N: tl.constexpr,
    BLOCK_I: tl.constexpr,
    EVEN_I: tl.constexpr,
    VEC: tl.constexpr,
    FINAL: tl.constexpr,
):
    """Per-lane float32 sums of ``dy`` and ``dy * ((x - hi) - lo)`` over one channel's tiles
    (eq. 9-10's sums), tree-summed per program; ``ws[0..1, s, c]`` (float64), or the sums
    with FINAL."""
    pid = tl.program_id(0)
    c = pid % C
    s = pid // C
    base = c * inner
    hi, lo = _split_mean(mean_ptr, c, c < C)
    rn = tl.arange(0, BLOCK_N)
    ri = tl.arange(0, BLOCK_I)
    row_stride = tl.multiple_of(C * inner, VEC)  # VEC divides inner: vector loads
    tile = rn[:, None] * row_stride + ri[None, :]
    a1 = tl.zeros([BLOCK_N, BLOCK_I], dtype=tl.float32)
    a2 = tl.zeros([BLOCK_N, BLOCK_I], dtype=tl.float32)
    t0 = s * TPS
    t1 = tl.minimum(t0 + TPS, T)
    for t in range(t0, t1):
        n0 = (t // IT) * BLOCK_N
        i0 = (t % IT) * BLOCK_I
        if EVEN_I:
            mask = (rn < N - n0)[:, None] & (ri < BLOCK_I)[None, :]
        else:
            mask = (rn < N - n0)[:, None] & (ri < tl.multiple_of(inner - i0, VEC))[None, :]
        offs = tl.multiple_of(base + n0 * row_stride + i0, VEC) + tile
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        a1 += dy  # masked lanes add 0
        a2 += tl.where(mask, dy * ((x - hi) - lo), 0.0)
    r1 = tl.sum(tl.sum(a1, 1), 0)
    r2 = tl.sum(tl.sum(a2, 1), 0)
    if FINAL:
        tl.store(s1_ptr + c, r1.to(tl.float32))
        tl.store(s2_ptr + c, r2.to(tl.float32))
    else:
        tl.store(ws_ptr + s * C + c, r1)
        tl.store(ws_ptr + (S + s) * C + c, r2)


@triton.jit
def sums_rows(
    dy_ptr,
    x_ptr,
    mean_ptr,
    ws_ptr,
    s1_ptr,
    s2_ptr,
    M,
    C,
    RPS,
    S,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    FINAL: tl.constexpr,
):
    """:func:`sums_planes` for rows of C channels."""
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BLOCK_C)
    cb = pid % CB
    s = pid // CB
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    hi, lo = _split_mean(mean_ptr, cols, cmask)
    rm = tl.arange(0, BLOCK_M)
    tile = rm[:, None] * C + cols[None, :]
    a1 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    a2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    r0 = s * RPS
    r1 = tl.minimum(r0 + RPS, M)
    for start in range(r0, r1, BLOCK_M):
        mask = (rm < r1 - start)[:, None] & cmask[None, :]
        offs = start * C + tile
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        a1 += dy
        a2 += tl.where(mask, dy * ((x - hi[None, :]) - lo[None, :]), 0.0)
    r_1 = tl.sum(a1, 0)
    r_2 = tl.sum(a2, 0)
    if FINAL:
        tl.store(s1_ptr + cols, r_1.to(tl.float32), mask=cmask)
        tl.store(s2_ptr + cols, r_2.to(tl.float32), mask=cmask)
    else:
        tl.store(ws_ptr + s * C + cols, r_1, mask=cmask)
        tl.store(ws_ptr + (S + s) * C + cols, r_2, mask=cmask)


@triton.jit
def sums_final(
    ws_ptr,
    s1_ptr,
    s2_ptr,
    C,
    S,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Sum the ``S`` float64 partial sums of ``BLOCK_C`` channels (a fixed tree), rounded once
    to float32."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rs = tl.arange(0, BLOCK_S)
    mask = (rs < S)[:, None] & cmask[None, :]
    offs = rs[:, None] * C + cols[None, :]
    p1 = tl.load(ws_ptr + offs, mask=mask, other=0.0)
    p2 = tl.load(ws_ptr + S * C + offs, mask=mask, other=0.0)
    tl.store(s1_ptr + cols, tl.sum(p1, 0).to(tl.float32), mask=cmask)
    tl.store(s2_ptr + cols, tl.sum(p2, 0).to(tl.float32), mask=cmask)


# --------------------------------------------------------------------------- elementwise


@triton.jit
def _store_out(ptrs, v, mask, INTERPRET: tl.constexpr):
    """Store float32 ``v`` in the output's dtype, rounded to nearest even.

    Compiled, a plain conversion (the hardware rounds to nearest even). Interpreted, masked
    lanes are zeroed first (NumPy warns on their overflows) and bfloat16 is rounded with
    integer ops as ``c10::BFloat16`` does, NaN kept a NaN (Triton 3.9's interpreter truncates
    float32 to bfloat16).
    """
    dtype = ptrs.dtype.element_ty
    if INTERPRET:
        v = tl.where(mask, v, 0.0)
        if dtype == tl.bfloat16:
            bits = tl.where(v != v, 0x7FC00000, v.to(tl.uint32, bitcast=True))
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
            out = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            out = v.to(dtype)
    else:
        out = v.to(dtype)
    tl.store(ptrs, out, mask=mask)


@triton.jit
def normalize_planes(
    x_ptr,
    y_ptr,
    mean_ptr,
    a_ptr,
    b_ptr,
    w_ptr,
    inv_ptr,
    eps,
    N,
    C,
    inner,
    IT,
    TPS,
    T,
    P,
    BLOCK_N: tl.constexpr,
    BLOCK_I: tl.constexpr,
    EVEN_I: tl.constexpr,
    VEC: tl.constexpr,
    STATS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """``y = ((x - hi) - lo) * scale + shift`` (eq. 3-4) over one channel's tiles, last
    program and last tile first (:func:`_norm_vectors` says what ``a``, ``b`` are)."""
    pid = P - 1 - tl.program_id(0)
    c = pid % C
    s = pid // C
    base = c * inner
    hi, lo, scale, shift = _norm_vectors(
        c, c < C, mean_ptr, a_ptr, b_ptr, w_ptr, inv_ptr, eps, s == 0, STATS, HAS_W, HAS_B
    )  # the first split stores inv_std
    rn = tl.arange(0, BLOCK_N)
    ri = tl.arange(0, BLOCK_I)
    row_stride = tl.multiple_of(C * inner, VEC)  # VEC divides inner: vector loads
    tile = rn[:, None] * row_stride + ri[None, :]
    t0 = s * TPS
    t1 = tl.minimum(t0 + TPS, T)
    for j in range(0, t1 - t0):
        t = t1 - 1 - j
        n0 = (t // IT) * BLOCK_N
        i0 = (t % IT) * BLOCK_I
        if EVEN_I:
            mask = (rn < N - n0)[:, None] & (ri < BLOCK_I)[None, :]
        else:
            mask = (rn < N - n0)[:, None] & (ri < tl.multiple_of(inner - i0, VEC))[None, :]
        offs = tl.multiple_of(base + n0 * row_stride + i0, VEC) + tile
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = ((x - hi) - lo) * scale + shift
        _store_out(y_ptr + offs, y, mask, INTERPRET)


@triton.jit
def normalize_rows(
    x_ptr,
    y_ptr,
    mean_ptr,
    a_ptr,
    b_ptr,
    w_ptr,
    inv_ptr,
    eps,
    M,
    C,
    RPS,
    P,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    STATS: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """:func:`normalize_planes` for rows of C channels."""
    pid = P - 1 - tl.program_id(0)
    CB = tl.cdiv(C, BLOCK_C)
    cb = pid % CB
    s = pid // CB
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    # The first split stores inv_std. (A vector mask & a scalar comparison is not a boolean
    # mask in Triton 3.9's interpreter: compare elementwise.)
    first = cmask & (cols * 0 == s)
    hi, lo, scale, shift = _norm_vectors(
        cols, cmask, mean_ptr, a_ptr, b_ptr, w_ptr, inv_ptr, eps, first, STATS, HAS_W, HAS_B
    )
    rm = tl.arange(0, BLOCK_M)
    tile = rm[:, None] * C + cols[None, :]
    r0 = s * RPS
    r1 = tl.minimum(r0 + RPS, M)
    n_tiles = tl.cdiv(r1 - r0, BLOCK_M)
    for j in range(0, n_tiles):
        start = r0 + (n_tiles - 1 - j) * BLOCK_M
        mask = (rm < r1 - start)[:, None] & cmask[None, :]
        offs = start * C + tile
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = ((x - hi[None, :]) - lo[None, :]) * scale[None, :] + shift[None, :]
        _store_out(y_ptr + offs, y, mask, INTERPRET)


@triton.jit
def dx_planes(
    dy_ptr,
    x_ptr,
    dx_ptr,
    mean_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    w_ptr,
    cnt,
    rcp,
    N,
    C,
    inner,
    IT,
    TPS,
    T,
    P,
    BLOCK_N: tl.constexpr,
    BLOCK_I: tl.constexpr,
    EVEN_I: tl.constexpr,
    VEC: tl.constexpr,
    STATS: tl.constexpr,
    HAS_W: tl.constexpr,
    RCP: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """``dx = (dy - mean_dy - ((x - hi) - lo) * proj) * k`` (eq. 12) over one channel's
    tiles, last first (:func:`_dx_vectors` says what ``a``, ``b``, ``c`` are)."""
    pid = P - 1 - tl.program_id(0)
    ch = pid % C
    s = pid // C
    base = ch * inner
    hi, lo, k, mean_dy, proj = _dx_vectors(
        ch, ch < C, mean_ptr, a_ptr, b_ptr, c_ptr, w_ptr, cnt, rcp, STATS, HAS_W, RCP
    )
    rn = tl.arange(0, BLOCK_N)
    ri = tl.arange(0, BLOCK_I)
    row_stride = tl.multiple_of(C * inner, VEC)  # VEC divides inner: vector loads
    tile = rn[:, None] * row_stride + ri[None, :]
    t0 = s * TPS
    t1 = tl.minimum(t0 + TPS, T)
    for j in range(0, t1 - t0):
        t = t1 - 1 - j
        n0 = (t // IT) * BLOCK_N
        i0 = (t % IT) * BLOCK_I
        if EVEN_I:
            mask = (rn < N - n0)[:, None] & (ri < BLOCK_I)[None, :]
        else:
            mask = (rn < N - n0)[:, None] & (ri < tl.multiple_of(inner - i0, VEC))[None, :]
        offs = tl.multiple_of(base + n0 * row_stride + i0, VEC) + tile
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dx = (dy - mean_dy - ((x - hi) - lo) * proj) * k
        _store_out(dx_ptr + offs, dx, mask, INTERPRET)


@triton.jit
def dx_rows(
    dy_ptr,
    x_ptr,
    dx_ptr,
    mean_ptr,
    a_ptr,
    b_ptr,
    c_ptr,
    w_ptr,
    cnt,
    rcp,
    M,
    C,
    RPS,
    P,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
    STATS: tl.constexpr,
    HAS_W: tl.constexpr,
    RCP: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """:func:`dx_planes` for rows of C channels."""
    pid = P - 1 - tl.program_id(0)
    CB = tl.cdiv(C, BLOCK_C)
    cb = pid % CB
    s = pid // CB
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    hi, lo, k, mean_dy, proj = _dx_vectors(
        cols, cmask, mean_ptr, a_ptr, b_ptr, c_ptr, w_ptr, cnt, rcp, STATS, HAS_W, RCP
    )
    rm = tl.arange(0, BLOCK_M)
    tile = rm[:, None] * C + cols[None, :]
    r0 = s * RPS
    r1 = tl.minimum(r0 + RPS, M)
    n_tiles = tl.cdiv(r1 - r0, BLOCK_M)
    for j in range(0, n_tiles):
        start = r0 + (n_tiles - 1 - j) * BLOCK_M
        mask = (rm < r1 - start)[:, None] & cmask[None, :]
        offs = start * C + tile
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        xmu = (x - hi[None, :]) - lo[None, :]
        dx = (dy - mean_dy[None, :] - xmu * proj[None, :]) * k[None, :]
        _store_out(dx_ptr + offs, dx, mask, INTERPRET)


# --------------------------------------------------------------------------- running update


@triton.jit
def running_update(
    rm_ptr,
    rv_ptr,
    mean_ptr,
    var_ptr,
    nbt_ptr,
    skip_ptr,
    C,
    f,
    g,
    bessel,
    CUMULATIVE: tl.constexpr,
    HAS_NBT: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``running = g * running + f * batch`` (eq. 13) for float32 buffers, in one program.

    The batch is skipped (buffers kept, ``skip += 1``) unless every mean and variance is
    finite; else ``nbt += 1``. ``CUMULATIVE`` (``momentum=None``, eq. 15): ``f = 1 / max(nbt,
    1)`` with the updated count and ``g = 1 - f``; else ``f``, ``g`` are the float32 momentum
    and ``1 - momentum``. ``bessel`` is the float32 ``m / (m - 1)`` (eq. 16; 1 for the biased
    variance). Each product and sum is rounded as the torch ops of
    ``running.native_running_update`` round it.
    """
    offs = tl.arange(0, BLOCK)
    bad = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, C, BLOCK):
        m = start + offs < C
        mu = tl.load(mean_ptr + start + offs, mask=m, other=0.0)
        v = tl.load(var_ptr + start + offs, mask=m, other=0.0)
        # |x| <= the largest finite value: False for inf and nan (no inf arithmetic).
        bad += (tl.abs(mu) > 1.7976931348623157e308).to(tl.int32) + (mu != mu).to(tl.int32)
        bad += (tl.abs(v) > 3.4028234663852886e38).to(tl.int32) + (v != v).to(tl.int32)
    ok = tl.sum(bad, 0) == 0
    if HAS_NBT:
        nbt = tl.load(nbt_ptr) + ok.to(tl.int64)
        tl.store(nbt_ptr, nbt)
    if HAS_SKIP:
        tl.store(skip_ptr, tl.load(skip_ptr) + (1 - ok.to(tl.int64)))
    if CUMULATIVE:
        f = tl.math.div_rn(1.0, tl.maximum(nbt, 1).to(tl.float32))
        g = 1.0 - f
    lim = tl.where(ok, C, 0)  # a skipped batch stores nothing
    for start in range(0, C, BLOCK):
        m = start + offs < lim
        mu = tl.load(mean_ptr + start + offs, mask=m, other=0.0).to(tl.float32)
        v = tl.load(var_ptr + start + offs, mask=m, other=0.0) * bessel
        rmv = tl.load(rm_ptr + start + offs, mask=m, other=0.0)
        rvv = tl.load(rv_ptr + start + offs, mask=m, other=0.0)
        tl.store(rm_ptr + start + offs, f * mu + g * rmv, mask=m)
        tl.store(rv_ptr + start + offs, f * v + g * rvv, mask=m)
