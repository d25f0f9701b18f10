"""Results tables and plots across runs: groups runs by method, mean +- std (ddof=1, the sample std) over runs."""
import os

import matplotlib
import matplotlib.ticker
import numpy as np

from . import methods
from .errors import check
from .figures import pyplot
from .runs import find_runs, load_json, run_label, write_csv

DDOF = 1  # sample standard deviation over runs
COLUMNS = [("avg_member_accuracy", "avg. acc."), ("diversity", "div."), ("ensemble_accuracy", "ens. acc."),
           ("nll", "NLL"), ("ece", "ECE")]


def load_runs(paths, group_by=("method",)):
    """[(group label, run dir, config, metrics)] for every finished run under `paths`."""
    runs = []
    for d in find_runs(paths):
        check(os.path.isfile(os.path.join(d, "metrics.json")), f"{d} is not finished (no metrics.json)")
        cfg, met = load_json(os.path.join(d, "config.json")), load_json(os.path.join(d, "metrics.json"))
        runs.append((run_label(cfg, group_by), d, cfg, met))
    return runs


def mean_std(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=DDOF)) if len(values) > 1 else float("nan")


def summarize_groups(runs):
    """{label: {column: (mean, std), 'runs': n, 'by_size': (mean curve), 'member_acc': (mean curve)}}."""
    groups = {}
    for label, _d, _cfg, met in runs:
        groups.setdefault(label, []).append(met)
    out = {}
    for label in sorted(groups, key=methods.order):
        mets = groups[label]
        row = {key: mean_std([m[key] for m in mets]) for key, _ in COLUMNS}
        row["runs"] = len(mets)
        row["members"] = sorted({m["members"] for m in mets})
        n = min(m["members"] for m in mets)  # curves over the sizes every run has
        row["by_size"] = np.mean([m["ensemble_accuracy_by_size"][:n] for m in mets], axis=0).tolist()
        row["member_acc"] = np.mean([m["member_accuracy"][:n] for m in mets], axis=0).tolist()
        row["epoch_seconds"] = mean_std([_cycle_epoch_seconds(m) for m in mets])
        row["trainable"] = mean_std([np.mean(m.get("member_trainable_fraction", [np.nan])[1:] or [np.nan]) for m in mets])
        out[label] = row
    base = out.get("StarSSE", {}).get("epoch_seconds", (np.nan,))[0]
    for row in out.values():  # the thesis' "x0.74 time": seconds per cycle epoch relative to StarSSE
        row["time_vs_starsse"] = row["epoch_seconds"][0] / base if np.isfinite(base) else float("nan")
    return out


def _cycle_epoch_seconds(met):
    """Mean seconds per epoch of members 2..M (the cycles of SSE/StarSSE; other DE members), or of member 1."""
    per_epoch = [v for v in met.get("member_seconds_per_epoch", []) if v is not None]
    return float(np.mean(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)) if per_epoch else float("nan")


def fmt(ms, digits=2):
    m, s = ms
    if not np.isfinite(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if np.isfinite(s) else f"{m:.{digits}f}"


def markdown_table(summary):
    timed = any(np.isfinite(r["time_vs_starsse"]) for r in summary.values())
    head = "| Algorithm | runs | M | " + " | ".join(name for _, name in COLUMNS) + " |" + \
        (" trained params (cycles) | time vs StarSSE |" if timed else "")
    sep = "|" + "---|" * (len(COLUMNS) + 3 + 2 * timed)
    lines = [head, sep]
    for label, row in summary.items():
        digits = {"nll": 3, "ece": 3}
        cells = [fmt(row[key], digits.get(key, 2)) for key, _ in COLUMNS]
        if timed:
            frac = row["trainable"][0]
            cells.append(f"{100 * frac:.1f} %" if np.isfinite(frac) else "-")
            cells.append(f"x{row['time_vs_starsse']:.2f}" if np.isfinite(row["time_vs_starsse"]) else "-")
        lines.append(f"| {label} | {row['runs']} | {'/'.join(map(str, row['members']))} | " + " | ".join(cells) + " |")
    lines.append("")
    if timed:
        lines.append("time vs StarSSE: seconds per epoch of members 2..M (the cycles) relative to StarSSE's, as the "
                     "thesis' PEFT time fractions; trained params: share of parameters trained in members 2..M.")
    lines.append(f"mean ± std over runs (std with ddof={DDOF}; a single run shows its value). Accuracy and diversity "
                 f"in %, diversity = 100 * mean over member pairs of disagreement / max(err1, err2); NLL in nats; "
                 f"ECE as a fraction (15 bins).")
    return "\n".join(lines)


RUN_COLUMNS = ["group", "run_dir", "method", "seed", "members", "avg_member_accuracy", "diversity", "ensemble_accuracy",
               "nll", "ece", "brier", "member_accuracy", "ensemble_accuracy_by_size"]


def runs_csv(path, runs):
    """runs.csv: one row per run (RUN_COLUMNS)."""
    write_csv(path, [{"group": label, "run_dir": d, "method": cfg.get("method"), "seed": cfg.get("seed"),
                      **{k: met.get(k) for k in RUN_COLUMNS[4:-2]},
                      "member_accuracy": " ".join(f"{a:.4f}" for a in met["member_accuracy"]),
                      "ensemble_accuracy_by_size": " ".join(f"{a:.4f}" for a in met["ensemble_accuracy_by_size"])}
                     for label, d, cfg, met in runs], RUN_COLUMNS)


def plot_curves(summary, key, ylabel, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, row in summary.items():
        ys = row[key]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=f"{label} ({row['runs']} runs)")
    ax.set_xlabel("ensemble size" if key == "by_size" else "member index")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
