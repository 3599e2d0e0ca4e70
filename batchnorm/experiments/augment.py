"""Batched random affine augmentation (rotation, shear, zoom, shift), in torch.

Article 001 augments MNIST with Keras's ``ImageDataGenerator`` (rotation, shear, zoom);
here one random affine map per image is drawn for the whole batch at once and applied with
``affine_grid`` / ``grid_sample`` (bilinear, zero padding: MNIST's background is 0), so
there is no per-sample Python.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["random_affine"]


def random_affine(
    x: Tensor,
    generator: torch.Generator,
    *,
    rotation: float = 10.0,
    shear: float = 10.0,
    zoom: float = 0.1,
    shift: float = 0.08,
) -> Tensor:
    """Apply an independent random affine map to each image of a batch.

    In normalized coordinates p in [-1, 1]^2 each output pixel samples the input at
    ``A p + t`` with ``A = R(theta) S(phi) / z``: theta ~ U(-rotation, rotation) degrees,
    phi ~ U(-shear, shear) degrees (horizontal shear ``[[1, tan phi], [0, 1]]``),
    z ~ U(1 - zoom, 1 + zoom) and t ~ U(-2 shift, 2 shift) per axis (shift is a fraction
    of the image size; the coordinate range is 2).

    Args:
        x: (N, C, H, W) images.
        generator: the source of randomness (CPU generator).
        rotation, shear: maximum angles in degrees; zoom: maximum relative scale change;
            shift: maximum translation as a fraction of the size.

    Returns:
        (N, C, H, W) augmented images, same dtype and device.
    """
    n = x.shape[0]

    def uniform(a: float) -> Tensor:
        return (torch.rand(n, generator=generator, dtype=torch.float32) * 2 - 1) * a

    theta = uniform(math.radians(rotation))  # (N,)
    phi = uniform(math.radians(shear))
    z = 1 + uniform(zoom)
    cos, sin, tan = theta.cos(), theta.sin(), phi.tan()
    # R @ S = [[cos, cos*tan - sin], [sin, sin*tan + cos]], divided by the zoom.
    a = (
        torch.stack(
            [torch.stack([cos, cos * tan - sin], 1), torch.stack([sin, sin * tan + cos], 1)], 1
        )
        / z[:, None, None]
    )  # (N, 2, 2)
    t = torch.stack([uniform(2 * shift), uniform(2 * shift)], 1)  # (N, 2)
    affine = torch.cat([a, t[:, :, None]], 2).to(device=x.device, dtype=x.dtype)  # (N, 2, 3)
    grid = torch.nn.functional.affine_grid(
        affine, list(x.shape), align_corners=False
    )  # (N, H, W, 2)
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
