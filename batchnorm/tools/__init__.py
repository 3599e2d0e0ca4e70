"""Tools over whole models: population statistics, folding, freezing, conversion (torch.nn,
Keras, synchronized BN), ``torch.func`` calls, the model doctor, and the progress bar.

They work on any model holding batch-norm layers, ours or ``torch.nn``'s, and reach the math
through :mod:`batchnorm.core`. Imported by name (``from batchnorm.tools.fold import fold``);
the public ones are re-exported by :mod:`batchnorm`.
"""
