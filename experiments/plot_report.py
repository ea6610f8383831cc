#!/usr/bin/env python3
"""Draws the figures of `muonlab report` from its report_data.json (called by the report itself).

usage: plot_report.py REPORT_DATA.json OUT_DIR

Writes curves_step, curves_time, lr_grid (when some method has a learning-rate grid) and optimizer_share,
each as .png and .svg. Every number comes from the JSON file; this script only draws.
"""
import json
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

METRIC_NAMES = {"val_loss": "validation loss", "val_acc": "validation accuracy"}


def colours(labels):
    """One colour per method, the same in every figure."""
    palette = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def title(axes, text):
    """Long section titles wrap instead of running off the figure."""
    axes.set_title("\n".join(textwrap.wrap(text, 75)), fontsize=11)


def save(figure, out_dir, name):
    figure.tight_layout()
    for extension in ("png", "svg"):
        figure.savefig(os.path.join(out_dir, f"{name}.{extension}"), dpi=110)
    plt.close(figure)


def curves(data, colour, out_dir, x_key, name, x_label):
    figure, axes = plt.subplots(figsize=(8, 5))
    for curve in data["curves"]:
        xs = curve[x_key]
        points = [(x, m, lo, hi) for x, m, lo, hi in zip(xs, curve["mean"], curve["min"], curve["max"]) if x is not None]
        if not points:
            continue
        x, mean, low, high = zip(*points)
        label = f'{curve["label"]} (n={curve["seeds"]})'
        # A run evaluated once (airbench94: only at the end) is a point, which a bare line would not show.
        axes.plot(x, mean, color=colour[curve["label"]], label=label, linewidth=1.6, marker="o" if len(x) == 1 else None)
        if curve["seeds"] > 1:
            axes.fill_between(x, low, high, color=colour[curve["label"]], alpha=0.18, linewidth=0)
    metric = data["metric"]
    axes.set_xlabel(x_label)
    axes.set_ylabel(METRIC_NAMES.get(metric, metric))
    # The early, steep part of the curves would flatten every difference that matters.
    finals = [c["mean"][-1] for c in data["curves"] if c["mean"]]
    starts = [v for c in data["curves"] for v in c["mean"][len(c["mean"]) // 5:]]
    if finals and starts:
        low, high = min(starts + finals), max(starts + finals)
        margin = 0.05 * (high - low or 1.0)
        axes.set_ylim(low - margin, high + margin)
    title(axes, f'{data["title"]}: {METRIC_NAMES.get(metric, metric)} against {x_label.split(" (")[0]}')
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    save(figure, out_dir, name)


def lr_grid(data, colour, out_dir):
    if not data["lr_grids"]:  # every method at one rate: no figure (and none left from an earlier report)
        for extension in ("png", "svg"):
            stale = os.path.join(out_dir, "lr_grid." + extension)
            if os.path.exists(stale):
                os.remove(stale)
        return
    figure, axes = plt.subplots(figsize=(8, 5))
    for grid in data["lr_grids"]:
        if not grid["lr"]:
            continue
        axes.plot(grid["lr"], grid["mean"], marker="o", color=colour.get(grid["label"]), label=grid["label"])
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (log scale)")
    metric = data["metric"]
    axes.set_ylabel(f"final {METRIC_NAMES.get(metric, metric)}")
    title(axes, f'{data["title"]}: final {METRIC_NAMES.get(metric, metric)} against learning rate')
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, ncol=2)
    save(figure, out_dir, "lr_grid")


def optimizer_share(data, colour, out_dir):
    shares = data["optimizer_share"]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(shares) + 1.5))
    labels = [s["label"] for s in shares]
    values = [100.0 * s["share"] for s in shares]
    axes.barh(labels, values, color=[colour[label] for label in labels])
    for y, (value, share) in enumerate(zip(values, shares)):
        axes.text(value, y, f' {value:.1f}% ({share["optimizer_s"]:.1f} of {share["train_s"]:.0f} s)', va="center",
                  fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("optimizer step time, % of training time")
    axes.set_xlim(0, max(values + [1.0]) * 1.35)
    title(axes, f'{data["title"]}: time in the optimizer step')
    save(figure, out_dir, "optimizer_share")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as file:
        data = json.load(file)
    out_dir = sys.argv[2]
    labels = [c["label"] for c in data["curves"]]
    labels += [g["label"] for g in data["lr_grids"] if g["label"] not in labels]
    colour = colours(labels)
    curves(data, colour, out_dir, "steps", "curves_step", "training step")
    curves(data, colour, out_dir, "train_s", "curves_time", "training time (s, evaluations excluded)")
    lr_grid(data, colour, out_dir)
    optimizer_share(data, colour, out_dir)


if __name__ == "__main__":
    main()
