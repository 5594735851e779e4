"""How well each attention approximates exact softmax: error against runtime and entropy.

    python -m benchmarks.approximation [--quick] --out=DIR [--qkv=FILE.npz | --workdir=RUN]
        [--length=512 --batch=2 --heads=12 --head_dim=64] [--methods=mra2,...]

Relative error of one attention layer's output against exact softmax attention
(`mra_jax.reference.softmax_attention`), `||Y - Yhat|| / ||Y||` per (instance, head) over
the real query positions, then averaged, as the MRA paper's profiler does
(docs/benchmarks.md, "The published figures").

(a) Budgets: every method at each budget of `benchmarks._methods.SWEEPS` (capped per length
    as the paper did), others at their registry defaults, with the forward+backward time
    (median after warm-up) as a ratio to softmax's in the same run: the paper's
    "efficiency vs approximation" figure.
(b) Entropy: Q and K are scaled by sqrt(s), s = 1/16 ... 16, which changes the entropy of
    the exact attention; each swept method runs at its largest budget whose time ratio in
    (a) is at most --entropy_time_ratio (its smallest budget if none is): the paper's
    "entropy vs approximation" figure, with the exact attention's mean entropy on x.

Inputs:
  --qkv=FILE.npz with arrays `q`, `k`, `v` of shape [B, L, H, D] (float; the attention's
    inputs after the projections, before the 1/sqrt(D) scaling, which the attentions apply)
    and optionally `mask` [B, L] (bool or 0/1, True = real token).
  --workdir=DIR of a trained `lra.main` run: the q, k, v and mask entering encoder block
    --layer's attention on --batch examples of --split, with the run's best-validation
    parameters (`lra.capture`); its length and heads replace --length/--heads/--head_dim.
  Otherwise synthetic, locally correlated inputs (`synthetic_qkv`): a latent AR(1) process
    along the sequence, so attention concentrates on nearby tokens as in trained models.
Methods with learned parameters (e.g. Linformer's projections)
use their random initialisation (`nnx.Rngs(0)`); methods with random features use
seed 0.

Writes DIR/approximation.json, DIR/approximation_runtime.png, DIR/approximation_entropy.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _methods, _plots, _timing, efficiency
from lra import capture
from mra_jax import reference

ENTROPY_SCALES = tuple(2.0**e for e in range(-4, 5))  # s = 1/16 ... 16
_QUICK_SCALES = (1 / 16, 1 / 4, 1.0, 4.0, 16.0)
_QUICK_BUDGETS = {
  "mra2": (1, 2, 4, 8),
  "mra2_s": (1, 2, 4, 8),
  "nystromformer": (16, 64),
  "longformer": (16, 64),
  "scatterbrain": (16, 64),
  "bigbird": (8, 32),
}


def synthetic_qkv(
  batch: int,
  length: int,
  heads: int,
  head_dim: int,
  *,
  seed: int = 0,
  correlation_length: float = 16.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Locally correlated q, k, v, float32 [B, L, H, D].

  A latent z follows a unit-variance AR(1) process along L with coefficient
  a = exp(-1 / correlation_length); q and k are z plus independent noise (std 0.3), so a
  logit q.k/sqrt(D) has std ~1 between unrelated tokens and a mean of ~sqrt(D) a^|i-j|
  between nearby ones (attention concentrates on a few correlation lengths); v is an
  independent AR(1) process with the same correlation length, so averaging nearby values
  keeps signal.

  Args:
    batch, length, heads, head_dim: the shape [B, L, H, D].
    seed: numpy seed.
    correlation_length: tokens over which the latent decorrelates by 1/e.

  Returns:
    (q, k, v) numpy float32 arrays.
  """
  for name, value in (
    ("batch", batch),
    ("length", length),
    ("heads", heads),
    ("head_dim", head_dim),
  ):
    if value < 1:
      raise ValueError(f"{name} must be >= 1; got {name}={value}")
  if correlation_length <= 0:
    raise ValueError(f"correlation_length must be > 0; got {correlation_length=}")
  rng = np.random.default_rng(seed)
  a = math.exp(-1.0 / correlation_length)

  def ar1():
    eps = rng.standard_normal((batch, length, heads, head_dim))
    z = np.empty_like(eps)
    z[:, 0] = eps[:, 0]
    for t in range(1, length):
      z[:, t] = a * z[:, t - 1] + math.sqrt(1 - a * a) * eps[:, t]
    return z

  z = ar1()
  noise = lambda: 0.3 * rng.standard_normal(z.shape)
  q, k, v = z + noise(), z + noise(), ar1()
  return tuple(x.astype(np.float32) for x in (q, k, v))


def load_qkv(path: str):
  """Reads q, k, v [B, L, H, D] and optional mask [B, L] from an .npz file."""
  with np.load(path) as data:
    missing = [key for key in ("q", "k", "v") if key not in data]
    if missing:
      raise ValueError(f"qkv file lacks arrays {missing}: {path=} has {sorted(data.keys())}")
    q, k, v = (np.asarray(data[key], np.float32) for key in ("q", "k", "v"))
    mask = np.asarray(data["mask"], bool) if "mask" in data else None
  if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
    raise ValueError(
      f"q, k, v must share one [B, L, H, D] shape; got {q.shape=}, {k.shape=}, {v.shape=}"
    )
  if mask is not None and mask.shape != q.shape[:2]:
    raise ValueError(f"mask must be [B, L] = {q.shape[:2]}; got {mask.shape=}")
  return q, k, v, mask


def relative_errors(
  y_BxLxHxD: jax.Array, yhat_BxLxHxD: jax.Array, mask_BxL: jax.Array | None
) -> jax.Array:
  """||Y - Yhat|| / ||Y|| per (instance, head) over real queries, float32 [B, H]."""
  y = y_BxLxHxD.astype(jnp.float32)
  diff = yhat_BxLxHxD.astype(jnp.float32) - y
  if mask_BxL is not None:
    keep = jnp.asarray(mask_BxL, bool)[:, :, None, None]
    y, diff = jnp.where(keep, y, 0.0), jnp.where(keep, diff, 0.0)
  return jnp.linalg.norm(diff, axis=(1, 3)) / jnp.linalg.norm(y, axis=(1, 3))


def mean_entropy(q_BxLxHxD: jax.Array, k_BxLxHxD: jax.Array, mask_BxL: jax.Array | None) -> float:
  """Mean over real queries and heads of the exact softmax attention's entropy (nats)."""
  D = q_BxLxHxD.shape[-1]
  s = jnp.einsum("bqhd,bkhd->bhqk", q_BxLxHxD, k_BxLxHxD) * D**-0.5
  if mask_BxL is not None:
    valid = jnp.asarray(mask_BxL, bool)
    s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
  logp = jax.nn.log_softmax(s, axis=-1)
  h_BxHxL = -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)
  if mask_BxL is None:
    return float(jnp.mean(h_BxHxL))
  w = jnp.broadcast_to(valid[:, None, :], h_BxHxL.shape)
  return float(jnp.sum(jnp.where(w, h_BxHxL, 0.0)) / jnp.sum(w))


def _error(attend, q, k, v, mask, y):
  try:
    yhat = jax.jit(attend)(q, k, v, mask)
    return float(jnp.mean(relative_errors(y, yhat, mask))), None
  except Exception as e:  # pylint: disable=broad-except
    return None, f"{type(e).__name__}: {e}"[:500]


def run(
  *,
  q,
  k,
  v,
  mask,
  names: list[str],
  budgets,
  scales,
  entropy_time_ratio: float,
  repeats: int,
  source: str,
  out_dir: str,
  argv=None,
  log=print,
) -> dict[str, object]:
  """Runs parts (a) and (b), writes JSON and plots under `out_dir`, returns the JSON."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1; got {repeats=}")
  if not scales or min(scales) <= 0:
    raise ValueError(f"scales must be positive; got {scales=}")
  os.makedirs(out_dir, exist_ok=True)
  B, L, H, D = q.shape
  q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
  mask = None if mask is None else jnp.asarray(mask, bool)
  methods, problems = _methods.methods_for([n for n in names if n != "softmax"], budgets)
  methods = [m for m in methods if _methods.fits(m, L)]
  report = {
    "setting": {
      "batch": B,
      "length": L,
      "heads": H,
      "head_dim": D,
      "dtype": "float32",
      "source": source,
      "masked": mask is not None,
      "error": "mean over (instance, head) of ||Y-Yhat||/||Y||",
      "time": "fwd+bwd of mean(out), median after warm-up",
      "repeats": repeats,
      "scales": list(scales),
      "entropy_time_ratio": entropy_time_ratio,
      "argv": argv,
      "hardware": efficiency.hardware(),
      "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    },
    "problems": problems,
    "budgets": [],
    "entropy": [],
  }
  for p in problems:
    log(f"PROBLEM {p}")
  write = lambda: _write_json(report, out_dir)
  timed = lambda attend: _timing.measure(
    _timing.fwd_bwd(lambda a, b, c: attend(a, b, c, mask)),
    (q, k, v),
    repeats=repeats,
    max_temp_bytes=efficiency._default_max_temp_bytes(),  # pylint: disable=protected-access
    max_call_seconds=120.0,
  )

  y = reference.softmax_attention(q, k, v, mask)
  soft = timed(lambda a, b, c, m: reference.softmax_attention(a, b, c, m))
  log(f"softmax fwd+bwd {soft.seconds} s")
  attends = {}
  for m in methods:
    row = {
      "name": m.name,
      "label": m.label,
      "knob": m.knob,
      "budget": m.budget,
      "relative_error": None,
      "seconds": None,
      "time_ratio_vs_softmax": None,
    }
    try:
      attends[m.label] = _methods.build(m, num_heads=H, head_dim=D, max_length=L)
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = f"build: {type(e).__name__}: {e}"[:500]
    if m.label in attends:
      row["relative_error"], row["error"] = _error(attends[m.label], q, k, v, mask, y)
      meas = timed(attends[m.label])
      row["seconds"] = meas.seconds
      row["time_ratio_vs_softmax"] = (
        None if meas.seconds is None or not soft.seconds else meas.seconds / soft.seconds
      )
    report["budgets"].append(row)
    log(
      f"(a) {m.label}: error {row['relative_error']}, time/softmax "
      f"{row['time_ratio_vs_softmax']}" + (f" {row['error']}" if row.get("error") else "")
    )
    write()

  chosen = _choose(report["budgets"], entropy_time_ratio)
  report["entropy_methods"] = sorted(chosen)
  for s in scales:
    qs, ks = q * math.sqrt(s), k * math.sqrt(s)
    ys = reference.softmax_attention(qs, ks, v, mask)
    ent = mean_entropy(qs, ks, mask)
    for label in sorted(chosen):
      err, problem = _error(attends[label], qs, ks, v, mask, ys)
      report["entropy"].append(
        {"label": label, "scale": s, "entropy": ent, "relative_error": err, "error": problem}
      )
      log(f"(b) s={s:g} entropy={ent:.3f} {label}: error {err}")
    write()

  plot(report, out_dir)
  return report


def plot(report: dict[str, object], out_dir: str) -> None:
  """Writes both figures of an approximation report."""
  s = report["setting"]
  title = (
    f"B={s['batch']} L={s['length']} H={s['heads']} D={s['head_dim']}, {s['source']}, "
    f"{s['hardware']['device_kind']}, jax {s['hardware']['jax']}"
  )
  _plots.error_vs_runtime(
    [r for r in report["budgets"] if r["relative_error"] is not None],
    "efficiency vs approximation: " + title,
    os.path.join(out_dir, "approximation_runtime.png"),
  )
  _plots.error_vs_entropy(
    report["entropy"],
    "entropy vs approximation: " + title,
    os.path.join(out_dir, "approximation_entropy.png"),
  )


def _choose(rows, max_ratio: float) -> set[str]:
  """Per method: its largest budget at most `max_ratio` x softmax's time, else its smallest."""
  chosen = set()
  for name in {r["name"] for r in rows}:
    ok = [r for r in rows if r["name"] == name and r["relative_error"] is not None]
    if not ok:
      continue
    fast = [
      r
      for r in ok
      if r["time_ratio_vs_softmax"] is not None and r["time_ratio_vs_softmax"] <= max_ratio
    ]
    pick = (
      max(fast, key=lambda r: r["budget"] or 0) if fast else min(ok, key=lambda r: r["budget"] or 0)
    )
    chosen.add(pick["label"])
  return chosen


def _write_json(report, out_dir):
  with open(os.path.join(out_dir, "approximation.json"), "w") as f:
    json.dump(report, f, indent=1)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="bench_out/approximation")
  parser.add_argument("--quick", action="store_true", help="fewer budgets and scales, 3 repeats")
  parser.add_argument("--qkv", default=None, help=".npz with q, k, v [B,L,H,D], mask [B,L]")
  parser.add_argument(
    "--workdir",
    default=None,
    help="an `lra.main` run: q, k, v of its trained layer --layer on --batch examples of --split",
  )
  parser.add_argument("--layer", type=int, default=0, help="with --workdir: encoder block")
  parser.add_argument("--split", default="test", help="with --workdir: data split")
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--methods", default=None, help="comma-separated registry names (default: all registered)"
  )
  parser.add_argument("--repeats", type=int, default=None, help="default 5 (3 with --quick)")
  parser.add_argument("--entropy_time_ratio", type=float, default=0.5)
  parser.add_argument(
    "--plot_only", action="store_true", help="only redraw the figures from DIR/approximation.json"
  )
  args = parser.parse_args(argv)
  if args.plot_only:
    with open(os.path.join(args.out, "approximation.json")) as f:
      plot(json.load(f), args.out)
    return
  if args.qkv and args.workdir:
    raise ValueError(
      f"give --qkv or --workdir, not both; got qkv={args.qkv!r}, workdir={args.workdir!r}"
    )
  if args.qkv:
    q, k, v, mask = load_qkv(args.qkv)
    source = f"npz {os.path.basename(args.qkv)}"
  elif args.workdir:
    captured = capture.capture_qkv(
      args.workdir, layer=args.layer, split=args.split, num_examples=args.batch
    )
    q, k, v, mask = (captured[key] for key in ("q", "k", "v", "mask"))
    source = f"checkpoint {captured['source']}"
  else:
    q, k, v = synthetic_qkv(args.batch, args.length, args.heads, args.head_dim, seed=args.seed)
    mask, source = None, f"synthetic AR(1) seed {args.seed}"
  names = args.methods.split(",") if args.methods else _methods.registered_names()
  run(
    q=q,
    k=k,
    v=v,
    mask=mask,
    names=names,
    budgets=_QUICK_BUDGETS if args.quick else None,
    scales=_QUICK_SCALES if args.quick else ENTROPY_SCALES,
    entropy_time_ratio=args.entropy_time_ratio,
    repeats=args.repeats or (3 if args.quick else 5),
    source=source,
    out_dir=args.out,
    argv=sys.argv if argv is None else argv,
    log=lambda s: print(s, flush=True),
  )


if __name__ == "__main__":
  main()
