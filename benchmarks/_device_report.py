"""`benchmarks.device_check`'s report: progress lines, speed-up ratios and the markdown page."""

from __future__ import annotations

from typing import Any

from benchmarks import _timing


def check_line(row: dict[str, Any]) -> str:
  """One progress line of a correctness case."""
  precision = f" precision={row['precision']}" if row["precision"] else ""
  what = (
    f"{row['target']} {row['implementation']} {row['dtype']} block={row['block_size']}{precision}"
  )
  if row["status"] == "error":
    return f"ERROR    {what}: {row['error']}"
  worst = max(row["errors"], key=row["errors"].get)
  return (
    f"{row['status']:8s} {what}: max rel. error {row['max_error']:.2e} ({worst}), "
    f"tolerance {row['tolerance']:.0e}"
  )


def add_ratios(rows: list[dict[str, Any]]) -> None:
  """Adds dense-time / MRA-time ratios and the hi-res TFLOP/s to the MRA rows, in place.

  An MRA row is compared with the XLA dense row of its dtype and with the cuDNN row
  (bfloat16 only) of the same shape and pass, both measured in the same run.
  """
  seconds = {}
  for row in rows:
    if row["status"] == "ok":
      key = (row["B"], row["H"], row["L"], row["D"], row["pass"], row["method"], row["dtype"])
      seconds[key] = row["seconds"]
  for row in rows:
    if not row["method"].startswith("MRA") or row["status"] != "ok":
      continue
    shape = (row["B"], row["H"], row["L"], row["D"], row["pass"])
    for dense, dtype in (("xla", row["dtype"]), ("cudnn", "bfloat16")):
      if dense == "cudnn" and row["dtype"] != "bfloat16":
        continue
      baseline = seconds.get((*shape, f"dense {dense}", dtype))
      if baseline is not None:
        row[f"speedup_vs_{dense}"] = baseline / row["seconds"]
    if "hi_res_flops" in row:  # decode rows have none
      factor = _timing.FWD_BWD_FLOP_FACTOR if row["pass"].endswith("fwd+bwd") else 1.0
      row["hi_res_tflops"] = factor * row["hi_res_flops"] / row["seconds"] / 1e12


def shape_order(row: dict[str, Any]) -> tuple[int, int, int]:
  """Sort key of speed rows: single sequences by length, then batches (stable within)."""
  return (row["B"], row["H"], row["L"])


def _number(value, spec: str, missing: str = "") -> str:
  return missing if value is None else format(value, spec)


def _speed_note(row: dict[str, Any]) -> str:
  if row["status"] == "ok":
    return ""
  if row["status"] == "too_big":
    return f"does not fit: compiled temp {row['temp_bytes'] / 2**30:.1f} GiB"
  text = row.get("error", "")
  if not text.startswith(row["status"]):
    text = f"{row['status']}: {text}"
  return text.replace("|", "/").replace("\n", " ")[:160]


def markdown(report: dict[str, Any]) -> str:
  """The report as one markdown page: provenance, correctness, speed."""
  env = report["environment"]
  dirty = {True: " (dirty tree)", False: "", None: " (dirtiness unknown)"}[env["dirty"]]
  lines = [
    "# Device check"
    + (" (--quick: CPU smoke run, times mean nothing)" if report["quick"] else "")
    + ("" if report["complete"] else " (INCOMPLETE: the run stopped or is still running)"),
    "",
    f"- device: {env['device']} ({env['platform']}, {env['device_count']} device(s))",
    f"- jax {env['jax']}, jaxlib {env['jaxlib']}, python {env['python']}; "
    + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if k not in ("jax", "jaxlib")),
    f"- commit: {env['commit']}{dirty} (from {env['commit_source']})",
    f"- wall time: {report['seconds']:.0f} s; device peak memory: "
    + _number(report["device_peak_bytes"] and report["device_peak_bytes"] / 2**30, ".2f", "n/a")
    + (" GiB" if report["device_peak_bytes"] else ""),
    "",
    f"## Correctness against the reference ({report['mismatches']} mismatches, "
    f"{report['check_errors']} errors)",
    "",
    "Relative error: max |got - want| / max |want| over the output and each VJP cotangent.",
    "",
    "| status | target | implementation | dtype | block | precision | max rel. error | worst | tolerance |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for row in report["checks"]:
    errors = row.get("errors") or {}
    worst = max(errors, key=errors.get) if errors else row.get("error", "")[:80]
    lines.append(
      f"| {row['status']} | {row['target']} | {row['implementation']} | {row['dtype']} "
      f"| {row['block_size']} | {row['precision'] or 'default'} ({row['dots']} f32 dots) "
      f"| {_number(row.get('max_error'), '.2e')} | {worst} | {row['tolerance']:.0e} |"
    )
  if report["speed"]:
    lines += [
      "",
      "## Speed",
      "",
      "Median wall time; speed-up = dense time / MRA time (same run, same shape and pass);",
      "hi-res TFLOP/s = selected tiles' FLOPs over the whole MRA call's time; temp = XLA's",
      "compiled temporary memory; peak = the device's running peak after the row.",
      "",
      "| B×H×L×D | dtype | method | impl | pass | ms | vs cuDNN | vs XLA | hi-res TFLOP/s "
      "| temp MiB | peak GiB | note |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(report["speed"], key=shape_order):
      seconds = row.get("seconds")
      peak = row.get("peak_bytes")
      temp = row.get("temp_bytes")
      lines.append(
        f"| {row['B']}×{row['H']}×{row['L']}×{row['D']} | {row['dtype']} | {row['method']} "
        f"| {row['implementation']} | {row['pass']} | {_number(seconds and 1e3 * seconds, '.2f')} "
        f"| {_number(row.get('speedup_vs_cudnn'), '.2f')} | {_number(row.get('speedup_vs_xla'), '.2f')} "
        f"| {_number(row.get('hi_res_tflops'), '.1f')} | {_number(temp and temp / 2**20, '.0f')} "
        f"| {_number(peak and peak / 2**30, '.2f')} | {_speed_note(row)} |"
      )
  return "\n".join(lines) + "\n"
