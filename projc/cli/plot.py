"""``projc plot FILE.jsonl -o curve.png``: loss and the task's metric of a ``--log`` file against
updates: accuracy (classes, binary, multi-label), R² (regression) or MSE (reconstruction), chosen
by the keys the records hold (``projc.train.history``), so logs written before tasks existed plot as
they always did.

matplotlib is an optional extra (``pip install 'projc[plot]'``); without it the command says so.
"""
from __future__ import annotations

import os

from projc.errors import ProjcError
from projc.train.history import read_history


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ProjcError("projc plot needs matplotlib: pip install 'projc[plot]' (or `make install`)") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


# the right panel: (key suffix, axis label, title, y range or None), the first one the log holds
PANELS = (("accuracy", "accuracy", "accuracy", (0, 1)), ("r2", "R²", "R² (regression)", None),
          ("mse", "mean squared error", "MSE (reconstruction)", None))


def plot_history(log_path: str, out_path: str, *, title: str | None = None) -> str:
    """Draw the records of ``log_path`` into the image ``out_path`` (format from its extension, PNG
    without one), written atomically (``files.atomic_write``): a failure leaves an existing image
    as it was."""
    from projc.train.files import atomic_write, refuse_link

    if not out_path:
        raise ProjcError("plot: the output path is empty; give an image file name, e.g. curve.png")
    if os.path.isdir(out_path):
        raise ProjcError(f"{out_path}: is a folder; give an image file name, e.g. curve.png")
    refuse_link(out_path, "the plot")
    records = read_history(log_path)
    if not records:
        raise ProjcError(f"{log_path}: no records to plot (the run logged no evaluation)")
    plt = _pyplot()
    fmt = os.path.splitext(out_path)[1][1:].lower() or "png"
    supported = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if fmt not in supported:
        raise ProjcError(f"{out_path}: matplotlib cannot write .{fmt} images; use one of "
                         f"{', '.join('.' + k for k in sorted(supported))}")
    updates = [r["update"] for r in records]

    def series(key):
        return [r.get(key) if isinstance(r.get(key), (int, float)) else float("nan") for r in records]

    keys = {k for r in records for k in r}
    metric, label, panel_title, limits = next((p for p in PANELS if f"test_{p[0]}" in keys), PANELS[0])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        ax_loss.plot(updates, series("loss"), marker="o", label="train loss")
        ax_loss.set_xlabel("update")
        ax_loss.set_ylabel("cross-entropy loss" if metric == "accuracy" else "training loss")
        ax_loss.set_title("loss")
        ax_loss.grid(alpha=0.3)
        ax_acc.plot(updates, series(f"train_{metric}"), marker="o", label="train")
        ax_acc.plot(updates, series(f"test_{metric}"), marker="s", label="test")
        ax_acc.set_xlabel("update")
        ax_acc.set_ylabel(label)
        if limits is not None:
            ax_acc.set_ylim(*limits)
        ax_acc.set_title(panel_title)
        ax_acc.grid(alpha=0.3)
        ax_acc.legend(loc="lower right" if metric != "mse" else "upper right")
        fig.suptitle(title or os.path.basename(log_path))
        fig.tight_layout()
        atomic_write(out_path, lambda f: fig.savefig(f, format=fmt, dpi=100), what="the plot",
                     keep="an existing image there is unchanged")
    finally:
        plt.close(fig)
    return out_path
