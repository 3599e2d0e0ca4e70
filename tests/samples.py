"""Shared sample inputs for every numeric test of the core op (STYLE.md habit 10).

``sample_inputs()`` covers ranks 2-5, channel axis 1 and -1, channels-last memory format,
affine on/off, tracked statistics on/off, momentum None and the four floating dtypes. Each
sample is deterministic (its own seeded generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Sample:
    shape: tuple[int, ...]
    axis: int = 1
    affine: bool = True
    track: bool = True
    momentum: float | None = 0.1
    dtype: torch.dtype = torch.float64
    channels_last: bool = False
    seed: int = 0

    @property
    def channels(self) -> int:
        return self.shape[self.axis]

    def make(self, requires_grad: bool = False):
        """``(x, weight, bias, running_mean, running_var)`` for this sample."""
        g = torch.Generator().manual_seed(self.seed)
        c = self.channels
        # Per-channel offsets and scales, so a bug that mixes channels shows.
        shape = [1] * len(self.shape)
        shape[self.axis] = c
        off = (torch.randn(c, generator=g, dtype=torch.float64) * 3).reshape(shape)
        scl = (torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.5).reshape(shape)
        x = (torch.randn(self.shape, generator=g, dtype=torch.float64) * scl + off).to(self.dtype)
        if self.channels_last:
            fmt = torch.channels_last if len(self.shape) == 4 else torch.channels_last_3d
            x = x.contiguous(memory_format=fmt)
        w = b = rm = rv = None
        param_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        if self.affine:
            w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(param_dtype)
            b = torch.randn(c, generator=g, dtype=torch.float64).to(param_dtype)
        if self.track:
            rm = torch.randn(c, generator=g, dtype=torch.float64).to(param_dtype)
            rv = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(param_dtype)
        if requires_grad:
            x.requires_grad_(True)
            for t in (w, b):
                if t is not None:
                    t.requires_grad_(True)
        return x, w, b, rm, rv

    def __str__(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        flags = [dt, f"axis{self.axis}"]
        flags += ["affine"] if self.affine else ["noaffine"]
        flags += ["track"] if self.track else ["notrack"]
        if self.momentum is None:
            flags.append("cumavg")
        if self.channels_last:
            flags.append("cl")
        return "x".join(map(str, self.shape)) + "-" + "-".join(flags)


def sample_inputs(dtypes=DTYPES) -> list[Sample]:
    base = [
        Sample((16, 5)),
        Sample((7, 3), affine=False),
        Sample((6, 4, 9)),
        Sample((6, 9, 4), axis=-1),
        Sample((4, 3, 5, 6)),
        Sample((4, 3, 5, 6), channels_last=True, track=False),
        Sample((4, 5, 6, 3), axis=-1, momentum=None),
        Sample((3, 2, 3, 4, 5)),
        Sample((3, 3, 4, 5, 2), axis=-1, affine=False, track=False),
        Sample((2, 3, 2, 3, 4), channels_last=True, momentum=None),
        Sample((5, 1, 7)),  # C = 1
        Sample((1, 4, 3, 3)),  # batch 1, spatial positions make m = 9
    ]
    out = []
    for dtype in dtypes:
        for i, s in enumerate(base):
            out.append(
                Sample(
                    s.shape, s.axis, s.affine, s.track, s.momentum, dtype, s.channels_last, seed=i
                )
            )
    return out
