"""Robustness: no silent corruption in half precision, in loaded state, or in layouts.

Each test is a fault case: the input or state that used to pass silently (or crash), and the
clear error or exact result it gets now. The cases across processes are in
``test_distributed.py`` (``test_ranks_that_disagree_or_do_not_answer_get_clear_errors``); the
data cache's in ``test_experiments_data.py``; a damaged kernel build's in the kernel tests.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import batchnorm
from batchnorm.core import kernels
from batchnorm.core.validate import BatchNormError, BatchNormStateWarning


@pytest.fixture(params=[True, False], ids=["fast", "native"])
def fast(request):
    previous = kernels.set_enabled(request.param)
    yield request.param
    kernels.set_enabled(previous)


def test_float16_running_var_above_65504_is_stored_right_and_recovers(fast):
    """A batch variance above float16's range still moves a float16 running_var to the right
    (finite) value: the blend is computed in float32 and rounded once, as torch.nn does."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 4, 4, generator=g)
    x[:, 1] *= 400  # variance about 1.6e5 > 65504
    ours, theirs = batchnorm.BatchNorm2d(3).half(), nn.BatchNorm2d(3).half()
    xh = x.half()
    ours(xh), theirs(xh)
    assert torch.isfinite(ours.running_var).all()
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=2e-3, atol=1e-3)
    assert int(ours.skipped_updates) == 0 and int(ours.num_batches_tracked) == 1
    ours.eval()
    assert torch.isfinite(ours(xh)).all()


def test_float16_blend_that_overflows_is_skipped_and_counted(fast):
    """Where even the blended value cannot be a float16 (0.1 * 1e7 > 65504), nothing is
    stored and the skip is counted: never an inf that no later batch brings back."""
    bn = batchnorm.BatchNorm1d(2).half()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    x[:, 0] *= 3000
    before = bn.running_var.clone()
    bn(x.half())
    assert torch.equal(bn.running_var, before)
    assert int(bn.skipped_updates) == 1 and int(bn.num_batches_tracked) == 0
    bn(torch.randn(64, 2).half())  # a normal batch is stored again
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_var, before)


def test_float16_buffers_in_the_functional_form(fast):
    rm, rv = torch.zeros(2, dtype=torch.float16), torch.ones(2, dtype=torch.float16)
    x = (torch.randn(32, 2) * torch.tensor([1.0, 300.0])).half()
    batchnorm.functional.batch_norm(x, rm, rv, training=True)
    assert torch.isfinite(rv).all() and rv[1] > 1000


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    log_scale=st.floats(min_value=-8, max_value=30),
    offset=st.floats(min_value=-1e4, max_value=1e4, allow_nan=False),
    momentum=st.sampled_from([0.1, 0.9, 1.0, None]),
)
def test_half_inputs_at_any_scale_never_leave_a_non_finite_statistic(
    dtype, log_scale, offset, momentum
):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 3, 2, 2, generator=g) * 10.0**log_scale + offset
    x = x.to(dtype)
    if not torch.isfinite(x).all():
        x = torch.nan_to_num(x, posinf=torch.finfo(dtype).max, neginf=torch.finfo(dtype).min)
    bn = batchnorm.BatchNorm2d(3, momentum=momentum).to(dtype)
    for _ in range(2):
        bn(x)
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    assert int(bn.num_batches_tracked) + int(bn.skipped_updates) == 2


@pytest.mark.parametrize("bad", [-5.0, float("nan"), float("inf")])
def test_unusable_running_var_is_refused_at_load(bad):
    bn = batchnorm.BatchNorm2d(3)
    state = bn.state_dict()
    state["running_var"] = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(RuntimeError, match=r"running_var has 1 unusable entries \(channels \[1\]"):
        bn.load_state_dict(state)
    assert torch.equal(bn.running_var, torch.ones(3))  # nothing was loaded
    frozen = batchnorm.FrozenBatchNorm2d(3)
    with pytest.raises(RuntimeError, match="unusable"):
        frozen.load_state_dict({k: v for k, v in state.items() if k != "num_batches_tracked"})


def test_non_finite_running_mean_is_refused_at_load():
    bn = batchnorm.BatchNorm1d(2)
    state = bn.state_dict()
    state["running_mean"] = torch.tensor([float("nan"), 0.0])
    with pytest.raises(RuntimeError, match="running_mean has 1 unusable"):
        bn.load_state_dict(state)


@pytest.mark.parametrize("bad", [-5.0, float("nan")])
def test_from_keras_refuses_an_unusable_moving_variance(bad):
    weights = [np.ones(3), np.zeros(3), np.zeros(3), np.array([1.0, bad, 1.0])]
    with pytest.raises(BatchNormError, match="moving_variance has 1 unusable"):
        batchnorm.from_keras(weights, momentum=0.99, epsilon=1e-3)


def test_from_keras_file_refuses_an_unusable_moving_variance(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "bad.weights.h5"
    with h5py.File(path, "w") as f:
        grp = f.create_group("layers/batch_normalization/vars")
        for i, v in enumerate([np.ones(2), np.zeros(2), np.zeros(2), np.array([-5.0, 1.0])]):
            grp.create_dataset(str(i), data=v.astype(np.float32))
    with pytest.raises(BatchNormError, match="moving_variance"):
        batchnorm.from_keras(str(path), layer_name="batch_normalization")


def test_missing_num_batches_tracked_with_cumulative_average_warns():
    old = batchnorm.BatchNorm1d(3, momentum=None)
    for _ in range(5):
        old(torch.randn(8, 3))
    state = old.state_dict()
    del state["num_batches_tracked"]
    new = batchnorm.BatchNorm1d(3, momentum=None)
    with pytest.warns(BatchNormStateWarning, match="replaced by the next training batch"):
        new.load_state_dict(state, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batchnorm.BatchNorm1d(3).load_state_dict(state, strict=False)  # a float momentum: fine


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_output_memory_format_follows_torch(training, fast):
    ours, theirs = batchnorm.BatchNorm2d(3).train(training), nn.BatchNorm2d(3).train(training)
    base = torch.randn(4, 3, 5, 6)
    cases = {
        "transposed": base.transpose(2, 3),
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "strided": torch.randn(4, 3, 5, 12)[..., ::2],
        "contiguous": base,
    }
    for name, x in cases.items():
        y, y_t = ours(x), theirs(x)
        for fmt in (torch.contiguous_format, torch.channels_last):
            assert y.is_contiguous(memory_format=fmt) == y_t.is_contiguous(memory_format=fmt), (
                name,
                fmt,
            )
        torch.testing.assert_close(y, y_t, rtol=1e-4, atol=1e-5)
    assert ours(cases["transposed"]).view(4, -1).shape == (4, 90)
