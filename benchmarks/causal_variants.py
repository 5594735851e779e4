"""Causal MRA's variants against dense causal attention: approximation error and time.

    python -m benchmarks.causal_variants --workdir=RUN [--layers=0,1] [--examples=4]
                                         [--block_per_row=2,4,8] [--out=bench_out/causal_variants]
    python -m benchmarks.causal_variants --length=2048   # random inputs instead of a run

For each layer of a trained language-model run (`lra.capture`: the q, k, v its attention core
saw, rotary positions applied, on test windows), and each budget, every causal variant
(selection "previous_block" / "first_query", x low resolution "per_query" / "per_block" for
MRA-2; MRA-2-s) and causal local attention with as many keys per query (window
block_per_row * 32) are compared with exact causal softmax on the same inputs:
||Y - Yhat|| / ||Y|| per (example, head), averaged, and the forward time (median of
--repeats after a warm-up, all measured in this process, with dense causal attention's time
as the baseline). Prints a Markdown table; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

import mra_jax
from benchmarks import _timing, approximation
from mra_jax import attentions, causal

BLOCK = 32


def variants(block_per_row: int) -> dict[str, object]:
  """{label: attend(q, k, v, mask)} of the causal methods at one budget."""
  out = {}
  for selection in causal.SELECTIONS:
    for low_res in causal.LOW_RESOLUTIONS:
      config = mra_jax.MraConfig(
        is_causal=True,
        block_size=BLOCK,
        block_per_row=block_per_row,
        causal_selection=selection,
        causal_low_resolution=low_res,
      )
      out[f"MRA-2 {selection} {low_res}"] = lambda q, k, v, m, c=config: mra_jax.mra_attention(
        q, k, v, m, config=c
      )
    config = mra_jax.MraConfig(
      is_causal=True,
      block_size=BLOCK,
      block_per_row=block_per_row,
      approx_mode="sparse",
      causal_selection=selection,
    )
    out[f"MRA-2-s {selection}"] = lambda q, k, v, m, c=config: mra_jax.mra_attention(
      q, k, v, m, config=c
    )
  local = attentions.build(
    "local",
    num_heads=1,
    head_dim=1,
    max_length=1,
    rngs=nnx.Rngs(0),
    window_size=block_per_row * BLOCK,
    is_causal=True,
  )
  out["local (equal keys)"] = lambda q, k, v, m: local(q, k, v, m)
  return out


def dense(q, k, v, mask):
  out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :], is_causal=True)
  return jnp.where(mask[:, :, None, None], out, 0.0)


def compare(q, k, v, mask, budgets, repeats, source, log=print) -> list[dict]:
  """Rows of (source, budget, method, error, seconds, ratio to dense)."""
  want = jax.jit(dense)(q, k, v, mask)
  args = (q, k, v, mask)
  t_dense = _timing.measure(
    dense, args, repeats=repeats, max_temp_bytes=2**40, max_call_seconds=math.inf
  ).seconds
  rows = []
  for budget in budgets:
    for label, attend in variants(budget).items():
      got = jax.jit(attend)(*args)
      error = float(jnp.mean(approximation.relative_errors(want, got, mask)))
      t = _timing.measure(
        attend, args, repeats=repeats, max_temp_bytes=2**40, max_call_seconds=math.inf
      ).seconds
      row = dict(
        source=source,
        block_per_row=budget,
        method=label,
        relative_error=error,
        seconds=t,
        dense_seconds=t_dense,
        speedup=t_dense / t,
      )
      rows.append(row)
      log(
        f"| {source} | {budget} | {label} | {error:.4f} | {t * 1e3:.1f} | "
        f"{t_dense * 1e3:.1f} | {t_dense / t:.1f}x |"
      )
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="", help="a trained language-model run (lra.main)")
  p.add_argument("--layers", default="0,1")
  p.add_argument("--examples", type=int, default=4)
  p.add_argument("--length", type=int, default=2048, help="without --workdir: random inputs")
  p.add_argument("--block_per_row", default="2,4,8")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="bench_out/causal_variants")
  args = p.parse_args(argv)
  budgets = [int(x) for x in args.block_per_row.split(",")]
  print(
    f"# Causal variants vs dense causal attention ({jax.devices()[0].device_kind}, jax "
    f"{jax.__version__})"
  )
  print("| inputs | block_per_row | method | rel. error | time (ms) | dense (ms) | speed-up |")
  print("|---|---|---|---|---|---|---|")
  rows = []
  if args.workdir:
    from lra import capture  # pylint: disable=g-import-not-at-top  (the harness is optional)

    for layer in (int(x) for x in args.layers.split(",")):
      got = capture.capture_qkv(args.workdir, layer=layer, num_examples=args.examples)
      q, k, v = (jnp.asarray(got[name]) for name in "qkv")
      rows += compare(q, k, v, jnp.asarray(got["mask"]), budgets, args.repeats, f"layer {layer}")
  else:
    q, k, v = _timing.random_qkv((args.examples, args.length, 4, 32))
    mask = jnp.ones(q.shape[:2], bool)
    rows += compare(q, k, v, mask, budgets, args.repeats, "random")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "causal_variants.json"), "w") as f:
    json.dump(dict(rows=rows, workdir=args.workdir, jax=jax.__version__), f, indent=1)
  return rows


if __name__ == "__main__":
  main()
