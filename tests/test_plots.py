"""The figures' labels: each value label clears its bar's min-max whisker, the y label fits in the
figure, and curve panels share one x range."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from batchnorm.experiments import plots  # noqa: E402


def _run(acc: float) -> dict:
    return {"summary": {"final": {"running": {"test_acc": acc}}}}


@pytest.fixture
def kept(monkeypatch):
    """The figures the plot functions make, kept open instead of saved (closed afterwards)."""
    figs: list = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    yield figs
    for fig in figs:
        plt.close(fig)


def test_bar_labels_clear_their_whiskers(tmp_path, kept):
    # Wide spreads like init.png's "N(0, 3^2)" group (38-52%) and tight ones (95.8-96.1%).
    table = {
        "default": {
            "without BN": [_run(a) for a in (0.745, 0.757, 0.771)],
            "with BN": [_run(a) for a in (0.958, 0.959, 0.961)],
        },
        "N(0, 3^2)": {
            "without BN": [_run(a) for a in (0.385, 0.472, 0.515)],
            "with BN": [_run(a) for a in (0.857, 0.860, 0.862)],
        },
    }
    plots.plot_bars(table, tmp_path / "bars.png", title="t", xlabel="x")
    fig = kept[0]
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_text().replace(".", "").isdigit()]
    assert len(labels) == 4
    whiskers = [line.get_window_extent(renderer) for line in ax.lines]  # caps and seed dots
    whiskers += [c.get_window_extent(renderer) for c in ax.collections]  # the vertical bars
    for text in labels:
        box = text.get_window_extent(renderer)
        for w in whiskers:
            if not np.isfinite(w.extents).all() or (w.width == 0 and w.height == 0):
                continue  # an empty artist
            assert not box.overlaps(w), f"label {text.get_text()} overlaps a whisker at {w}"


def test_single_seed_bar_has_a_label(tmp_path, kept):
    plots.plot_bars({"a": {"s": [_run(0.9)]}}, tmp_path / "b.png", title="t", xlabel="x")
    assert [t.get_text() for t in kept[0].axes[0].texts] == ["90.0"]


def test_curve_panels_share_one_epoch_range(tmp_path, kept):
    # As a run logs them: test accuracy from epoch 0, training accuracy from epoch 1.
    metrics = [{"epoch": 0, "test_acc": 0.1}] + [
        {"epoch": e, "train_acc": 0.5 + 0.1 * e, "test_acc": 0.5 + 0.1 * e} for e in (1, 2, 3)
    ]
    plots.plot_curves({"g": [{"metrics": metrics}]}, tmp_path / "c.png", title="t")
    train_ax, test_ax = kept[0].axes[:2]
    assert train_ax.get_xlim() == test_ax.get_xlim()
    assert train_ax.get_xlim()[0] <= 0.0


def test_bar_axis_label_fits_in_the_figure(tmp_path, kept):
    """lr_lenet.png's case: bars from 45% to 99%, so the axis starts above 0 and says so; the
    y label stays inside the figure and clear of the footnote, after the layout of _save."""
    table = {
        "x1": {"without BN": [_run(a) for a in (0.39, 0.43, 0.55)], "with BN": [_run(0.97)]},
        "x30": {"without BN": [_run(0.974)], "with BN": [_run(0.986)]},
    }
    plots.plot_bars(table, tmp_path / "bars.png", title="t", xlabel="learning rate")
    fig = kept[0]
    fig.tight_layout()  # as _save does
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    label = fig.axes[0].yaxis.label
    assert "axis from" in label.get_text()
    box = label.get_window_extent(renderer)
    page = fig.bbox
    assert page.y0 <= box.y0 and box.y1 <= page.y1 and page.x0 <= box.x0, (box, page)
    (footnote,) = fig.texts
    assert not box.overlaps(footnote.get_window_extent(renderer))
