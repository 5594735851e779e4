"""Markdown tables for docs/benchmarks.md: our measurements beside the published ones.

    python -m benchmarks._tables --efficiency=DIR/efficiency.json \
        [--approximation=DIR/approximation.json]

The published numbers are transcribed from the MRA repository's profiler outputs
(mlpen/mra-attention `old_code/supplement_code/outputs/`; docs/benchmarks.md, "The published
figures"): fwd+bwd ms and MB per instance of a 1-layer, 12x64-head model, fp32, GPU not
stated (`efficiency-*.json`), and the relative error at N=512, s=1 on RoBERTa features
(`<method>-512.json`, averaged by us).
They are keyed by (registry name, budget); budget None is the method's single setting.
"""

from __future__ import annotations

import argparse
import json

_B = {  # budgets in the order of the published lists
  "mra2": (1, 2, 4, 8, 16, 32, 64),
  "mra2_s": (1, 2, 4, 8, 16, 32, 64),
  "nystromformer": (16, 32, 64, 128, 256, 512, 1024),
  "longformer": (16, 32, 64, 128, 256, 512, 1024),
  "scatterbrain": (16, 32, 64, 128, 256, 512, 1024),
  "bigbird": (8, 16, 32, 64, 128),
}


def _table(per_name: dict[str, tuple[float, ...]]) -> dict[tuple[str, int | None], float]:
  out = {}
  for name, values in per_name.items():
    if name == "softmax":
      out[(name, None)] = values[0]
    else:
      out.update({(name, b): v for b, v in zip(_B[name], values)})
  return out


# Published fwd+bwd time (ms per instance) and memory (MB per instance), `efficiency-*.json`.
PUBLISHED_MS = {
  512: _table(
    {
      "softmax": (0.860,),
      "mra2": (0.638, 0.671, 0.736, 0.875),
      "mra2_s": (0.565, 0.597, 0.665, 0.804),
      "nystromformer": (0.591, 0.615, 0.714, 1.118),
      "longformer": (1.127, 1.158, 1.304, 1.632),
      "bigbird": (2.122, 2.206, 2.241),
      "scatterbrain": (1.856, 2.032, 2.237, 2.551),
    }
  ),
  4096: _table(
    {
      "softmax": (30.815,),
      "mra2": (5.152, 5.384, 5.959, 7.052, 9.278, 13.713, 22.530),
      "mra2_s": (4.547, 4.782, 5.323, 6.438, 8.664, 13.105, 22.056),
      "nystromformer": (4.566, 4.636, 4.958, 5.835, 8.909, 21.830, 91.988),
      "longformer": (8.755, 9.006, 10.183, 12.938, 18.571, 29.799, 52.142),
      "bigbird": (17.625, 18.550, 19.487, 24.602, 34.459),
      "scatterbrain": (15.374, 15.945, 18.068, 20.591, 27.429, 40.764, 67.784),
    }
  ),
}
PUBLISHED_MB = {
  512: _table(
    {
      "softmax": (70.97,),
      "mra2": (24.81, 25.59, 28.10, 34.30),
      "mra2_s": (21.49, 22.28, 23.83, 29.15),
      "nystromformer": (21.73, 25.16, 34.77, 65.01),
      "longformer": (78.82, 40.77, 43.32, 48.45),
      "bigbird": (62.42, 65.18, 71.90),
      "scatterbrain": (78.7, 78.7, 78.7, 78.7),
    }
  ),
  4096: _table(
    {
      "softmax": (3931.7,),
      "mra2": (199.8, 206.0, 228.1, 277.6, 380.8, 1343.6, 1255.0),
      "mra2_s": (171.9, 178.2, 190.7, 233.2, 378.9, 670.7, 1838.7),
      "nystromformer": (169.2, 185.9, 221.7, 304.4, 546.0, 1244.9, 3364.8),
      "longformer": (629.9, 325.5, 345.0, 384.3, 1004.5, 831.9, 1493.5),
      "bigbird": (514.4, 554.8, 665.0, 890.6, 1303.2),
      "scatterbrain": (624.1, 624.0, 624.0, 624.0, 751.1, 1088.1, 1764.0),
    }
  ),
}
# Published mean relative error at N=512, s=1 (`<method>-512.json`).
PUBLISHED_ERROR_512 = _table(
  {
    "mra2": (0.506, 0.404, 0.284, 0.153),
    "mra2_s": (0.634, 0.486, 0.330, 0.169),
    "nystromformer": (0.758, 0.695, 0.625, 0.548),
    "longformer": (0.629, 0.480, 0.364, 0.266),
    "bigbird": (0.431, 0.272, 0.140),
    "scatterbrain": (0.671, 0.517, 0.405, 0.316),
  }
)


def _f(v, spec=".3f"):
  return "-" if v is None else format(v, spec)


def efficiency_table(report: dict, lengths=(512, 4096)) -> str:
  """Time and memory ratios to softmax, ours beside published, at `lengths`."""
  rows = report["results"]
  keys = []
  for r in rows:
    if (r["name"], r["budget"]) not in keys:
      keys.append((r["name"], r["budget"]))
  head = ["method"]
  for L in lengths:
    head += [f"time/softmax L={L} ours", "published", f"memory/softmax L={L} ours", "published"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, budget in keys:
    label = next(r["label"] for r in rows if (r["name"], r["budget"]) == (name, budget))
    cells = [label]
    for L in lengths:
      ours = next(
        (r for r in rows if (r["name"], r["budget"], r["length"]) == (name, budget, L)), None
      )
      pub = lambda table: (
        None
        if (name, budget) not in table[L]
        else table[L][(name, budget)] / table[L][("softmax", None)]
      )
      t_ours = ours and (
        ours["time_ratio_vs_softmax"] if ours["status"] == "ok" else ours["status"]
      )
      m_ours = ours and ours["temp_ratio_vs_softmax"]
      cells += [
        t_ours if isinstance(t_ours, str) else _f(t_ours),
        _f(pub(PUBLISHED_MS)),
        _f(m_ours),
        _f(pub(PUBLISHED_MB)),
      ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def absolute_table(report: dict) -> str:
  """Our absolute seconds and compiled temp MiB per (method, length)."""
  rows = report["results"]
  lengths = sorted({r["length"] for r in rows})
  labels = list(dict.fromkeys(r["label"] for r in rows))
  head = ["method"] + [f"L={L} s / MiB" for L in lengths]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label in labels:
    cells = [label]
    for L in lengths:
      r = next((r for r in rows if r["label"] == label and r["length"] == L), None)
      if r is None:
        cells.append("")
      elif r["status"] == "ok":
        cells.append(f"{r['seconds']:.4f} / {r['temp_mib']:.0f}")
      else:
        cells.append(
          f"{r['status']}" + (f" ({r['temp_mib']:.0f} MiB)" if r.get("temp_mib") else "")
        )
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def approximation_table(report: dict) -> str:
  """Relative error and time ratio per budget, with the published error at 512 beside."""
  L = report["setting"]["length"]
  lines = [
    "| method | relative error (ours) | published (RoBERTa features, N=512) "
    "| time/softmax (ours) |",
    "|---|---|---|---|",
  ]
  for r in report["budgets"]:
    pub = PUBLISHED_ERROR_512.get((r["name"], r["budget"])) if L == 512 else None
    err = _f(r["relative_error"]) if r["relative_error"] is not None else "error"
    lines.append(f"| {r['label']} | {err} | {_f(pub)} | {_f(r['time_ratio_vs_softmax'])} |")
  return "\n".join(lines)


def entropy_table(report: dict) -> str:
  """Relative error per entropy scale s (columns) for the chosen methods (rows)."""
  ent = report["entropy"]
  scales = sorted({r["scale"] for r in ent})
  by_scale = {r["scale"]: r["entropy"] for r in ent}
  head = ["method"] + [f"s={s:g} (H={by_scale[s]:.2f})" for s in scales]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label in report.get("entropy_methods", []):
    errs = {r["scale"]: r["relative_error"] for r in ent if r["label"] == label}
    lines.append("| " + " | ".join([label] + [_f(errs.get(s)) for s in scales]) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--efficiency", default=None)
  parser.add_argument("--approximation", default=None)
  args = parser.parse_args(argv)
  if args.efficiency:
    with open(args.efficiency) as f:
      eff = json.load(f)
    print(efficiency_table(eff), end="\n\n")
    print(absolute_table(eff), end="\n\n")
  if args.approximation:
    with open(args.approximation) as f:
      approx = json.load(f)
    print(approximation_table(approx), end="\n\n")
    print(entropy_table(approx))


if __name__ == "__main__":
  main()
