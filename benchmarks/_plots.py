"""Matplotlib (Agg) figures for the efficiency and approximation benchmarks."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

_MARKERS = "osD^v<>pPX*h"


def _style(i: int) -> dict[str, object]:
  """Distinct colour and marker for line i (more lines than the default 10 colours)."""
  return {"color": plt.get_cmap("tab20")(i % 20), "marker": _MARKERS[i % len(_MARKERS)]}


def _grid(n: int):
  cols = min(n, 3)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:n])


def efficiency_grid(
  rows: list[dict[str, Any]], field: str, ylabel: str, title: str, path: str
) -> None:
  """One log-log panel per attention (budgets as lines), softmax dashed in each.

  Args:
    rows: efficiency result rows (keys: name, label, length, status, and `field`).
    field: the y value, e.g. "seconds" or "temp_mib".
    ylabel: axis label.
    title: figure title.
    path: where the PNG goes.
  """
  ok = [r for r in rows if r.get(field) is not None]
  names = sorted({r["name"] for r in ok if r["name"] != "softmax"})
  soft = sorted((r["length"], r[field]) for r in ok if r["name"] == "softmax")
  fig, axes = _grid(max(len(names), 1))
  for ax, name in zip(axes, names or ["softmax"]):
    labels = sorted({r["label"] for r in ok if r["name"] == name}, key=lambda s: (len(s), s))
    for i, label in enumerate(labels):
      pts = sorted((r["length"], r[field]) for r in ok if r["label"] == label)
      ax.plot(*zip(*pts), ms=3, **_style(i), label=label.replace(name, "").strip("[]") or name)
    if soft:
      ax.plot(*zip(*soft), "k--", marker="x", ms=4, label="softmax")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", nonpositive="clip")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("sequence length L")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def error_vs_runtime(rows: list[dict[str, Any]], title: str, path: str) -> None:
  """The paper's "efficiency vs approximation" picture: one line per method over budgets.

  Args:
    rows: approximation rows with name, time_ratio_vs_softmax, relative_error.
    title: figure title.
    path: where the PNG goes.
  """
  fig, ax = plt.subplots(figsize=(8.4, 5.0))
  for i, name in enumerate(sorted({r["name"] for r in rows})):
    # Joined in budget order: noisy times must not reorder the line.
    pts = [
      (r["time_ratio_vs_softmax"], r["relative_error"])
      for r in sorted(rows, key=lambda r: r["budget"] or 0)
      if r["name"] == name
      and r["time_ratio_vs_softmax"] is not None
      and r["relative_error"] is not None
    ]
    if pts:
      ax.plot(*zip(*pts), ms=5, label=name, **_style(i))
  ax.set_xscale("log")
  ax.set_yscale("log", nonpositive="clip")
  ax.set_xlabel("fwd+bwd time / softmax's (same run)")
  ax.set_ylabel("relative error ||Y - Yhat|| / ||Y||")
  ax.set_title(title, fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def error_vs_entropy(rows: list[dict[str, Any]], title: str, path: str) -> None:
  """The paper's "entropy vs approximation" picture: error against the exact attention's
  mean entropy, one line per method (at one budget), as Q and K are scaled.

  Args:
    rows: rows with label, entropy, relative_error.
    title: figure title.
    path: where the PNG goes.
  """
  fig, ax = plt.subplots(figsize=(8.4, 5.0))
  for i, label in enumerate(sorted({r["label"] for r in rows})):
    pts = sorted(
      (r["entropy"], r["relative_error"])
      for r in rows
      if r["label"] == label and r["relative_error"] is not None
    )
    if pts:
      ax.plot(*zip(*pts), ms=5, label=label, **_style(i))
  ax.set_yscale("log", nonpositive="clip")
  ax.set_xlabel("mean entropy of exact softmax attention (nats)")
  ax.set_ylabel("relative error ||Y - Yhat|| / ||Y||")
  ax.set_title(title, fontsize=8)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
