"""Population statistics (Algorithm 2 as a tool)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from batchnorm import BatchNorm, BatchNorm2d, recompute_statistics
from batchnorm import reference as ref


def convnet(bn_cls) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), bn_cls(4), nn.ReLU(), nn.Dropout(0.5))


@pytest.mark.parametrize("bn_cls", [BatchNorm2d, nn.BatchNorm2d])
@pytest.mark.parametrize("split", [(60,), (10,) * 6, (7, 23, 30), (1, 59)])
def test_equals_statistics_of_concatenated_data_for_any_split(bn_cls, split):
    torch.manual_seed(0)
    model = convnet(bn_cls).double()
    g = torch.Generator().manual_seed(1)
    data = torch.randn(60, 2, 6, 6, generator=g, dtype=torch.float64) * 3 + 5
    model.train()
    model[1].momentum = 0.3
    recompute_statistics(model, torch.split(data, list(split)))
    with torch.no_grad():
        z = model[0](data)  # the BN layer's input, (60, 4, 4, 4)
    torch.testing.assert_close(model[1].running_mean, z.mean((0, 2, 3)), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(model[1].running_var, z.var((0, 2, 3)), atol=1e-12, rtol=1e-12)
    # Training flags and momentum restored, num_batches_tracked untouched.
    assert model.training and model[1].training and model[3].training
    assert model[1].momentum == 0.3
    assert int(model[1].num_batches_tracked) == 0


def test_paper_estimator_is_algorithm_2():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), BatchNorm(4)).double()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(5)]
    recompute_statistics(model, [(b, 0) for b in batches], estimator="paper")
    with torch.no_grad():
        zs = [model[0](b).numpy() for b in batches]
    means = np.stack([z.mean(0) for z in zs])
    vars_ = np.stack([z.var(0) for z in zs])
    want_mean, want_var = ref.population_statistics(means, vars_, 8)
    np.testing.assert_allclose(model[1].running_mean.numpy(), want_mean, atol=1e-12)
    np.testing.assert_allclose(model[1].running_var.numpy(), want_var, atol=1e-12)


def test_biased_layer_stores_biased_variance_and_limits_are_honoured():
    bn = BatchNorm(3, axis=-1, store_unbiased=False).double()
    model = nn.Sequential(bn)
    data = torch.randn(40, 5, 3, dtype=torch.float64)
    recompute_statistics(model, torch.split(data, 10), num_samples=25)
    used = data[:25].reshape(-1, 3)
    torch.testing.assert_close(bn.running_var, used.var(0, unbiased=False))
    recompute_statistics(model, torch.split(data, 10), num_batches=1)
    torch.testing.assert_close(bn.running_mean, data[:10].reshape(-1, 3).mean(0))


def test_errors_and_restoration_on_failure():
    with pytest.raises(ValueError, match="no batch-norm layer"):
        recompute_statistics(nn.Linear(2, 2), [torch.randn(2, 2)])
    model = nn.Sequential(BatchNorm(3))
    with pytest.raises(ValueError, match="estimator"):
        recompute_statistics(model, [torch.randn(2, 3)], estimator="ema")
    with pytest.raises(ValueError, match="iterable was empty"):
        recompute_statistics(model, [])
    with pytest.raises(TypeError, match="forward=lambda"):
        recompute_statistics(model, [object()])
    model.eval()
    model[0].momentum = 0.2
    with pytest.raises(ValueError, match="4 entries.*3 channels|3 entries.*4 channels"):
        recompute_statistics(model, [torch.randn(4, 4)])
    assert not model.training and not model[0].training and model[0].momentum == 0.2


def deep_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6, bias=False),
        BatchNorm(6),
        nn.Tanh(),
        nn.Linear(6, 5, bias=False),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Linear(5, 3, bias=False),
        BatchNorm(3),
    ).double()


def test_eval_mode_gives_every_layer_its_inference_inputs_statistics_for_any_split():
    g = torch.Generator().manual_seed(3)
    data = torch.randn(90, 4, generator=g, dtype=torch.float64) * 2 + 1
    results = []
    for split in [(90,), (9,) * 10, (2, 40, 48)]:
        model = deep_model()
        recompute_statistics(model, list(torch.split(data, list(split))), mode="eval")
        results.append([b.clone() for n, b in model.named_buffers() if "running" in n])
        # Each layer's statistics are those of its inputs when the model runs in eval mode.
        model.eval()
        with torch.no_grad():
            z = data
            for layer in model:
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    torch.testing.assert_close(
                        layer.running_mean, z.mean(0), atol=1e-12, rtol=1e-12
                    )
                    torch.testing.assert_close(layer.running_var, z.var(0), atol=1e-12, rtol=1e-12)
                z = layer(z)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_train_mode_deeper_layers_depend_on_the_split_as_algorithm_2_does():
    g = torch.Generator().manual_seed(3)
    data = torch.randn(90, 4, generator=g, dtype=torch.float64)
    a, b = deep_model(), deep_model()
    recompute_statistics(a, torch.split(data, 90))
    recompute_statistics(b, torch.split(data, 9))
    torch.testing.assert_close(a[1].running_var, b[1].running_var, atol=1e-12, rtol=1e-12)
    assert not torch.allclose(a[4].running_var, b[4].running_var, atol=1e-6)


def test_eval_mode_needs_a_reiterable():
    with pytest.raises(TypeError, match="re-iterable"):
        recompute_statistics(
            deep_model(), iter([torch.randn(4, 4, dtype=torch.float64)]), mode="eval"
        )
    with pytest.raises(ValueError, match="mode must be"):
        recompute_statistics(deep_model(), [torch.randn(4, 4)], mode="precise")
