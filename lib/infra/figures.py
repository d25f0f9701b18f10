"""Figures of the analyses: matplotlib without a display, atomic PNG files, category colours."""
import os

from lib.infra.files import atomic_write


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    pyplot().close(fig)


def category_colors(n):
    """n distinct colours: tab10, tab20, then a sampled colormap."""
    plt = pyplot()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("viridis")(i / max(n - 1, 1)) for i in range(n)]


def short(run_dir):
    """The last two parts of a run directory, for legends ('starsse/run0')."""
    return "/".join(os.path.normpath(run_dir).split(os.sep)[-2:])
