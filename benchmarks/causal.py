"""Causal MRA against dense causal attention on this machine: decode steps and prefill.

    python -m benchmarks.causal [--decode_lengths=16384,65536] [--prefill_lengths=4096,16384]
                                [--repeats=5] [--out=bench_out/causal]

B=1, H=8, D=64, float32, block 32, block_per_row=8, MRA-2 with the default causal variant
(and MRA-2-s), implementation "auto" (the chunked jnp path on a CPU). Both baselines are
measured in the same process:

* decode: the attention of one token at the end of a context of L tokens held in a cache
  (random keys and values): `mra_jax.decode.attend_cached`, against dense attention of the
  token's query over the same cache (`jax.nn.dot_product_attention`, masked to the positions
  written). Writing the token into the cache, the same O(1) update for both (in place when
  the cache is donated), is left out of both.
* prefill: the causal call over L tokens, forward and forward+backward (the gradient of
  mean(out) in q, k, v), against `jax.nn.dot_product_attention(..., is_causal=True)`.

Time is the median of --repeats runs after a warm-up; memory is XLA's compiled temporary
buffer size. Dense runs only where its compiled memory fits in half the RAM. Prints Markdown
tables with the speed-up of each MRA row over dense of the same shape and pass; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import jax
import jax.numpy as jnp

import mra_jax
from benchmarks import _timing
from mra_jax import decode

B, H, D = 1, 8, 64


def _config(approx_mode: str) -> mra_jax.MraConfig:
  return mra_jax.MraConfig(is_causal=True, block_per_row=8, approx_mode=approx_mode)


def decode_programs(length: int, approx_mode: str):
  """(mra step, dense step, args): the token at position length - 1 of a filled cache."""
  config = _config(approx_mode)
  keys = jax.random.split(jax.random.key(0), 4)
  k = jax.random.normal(keys[0], (B, length, H, D))
  v = jax.random.normal(keys[1], (B, length, H, D))
  q_t = jax.random.normal(keys[2], (B, 1, H, D))
  cache = decode.init_cache(B, length, H, D, config=config)
  cache = cache._replace(
    key=k,
    value=v,
    key_sum=k.reshape(B, -1, 32, H, D).sum(2),
    value_sum=v.reshape(B, -1, 32, H, D).sum(2),
    count=jnp.full((B, length // 32), 32.0),
    summary_source=jax.random.normal(keys[3], (B, length // 32, H, D)),
    index=jnp.asarray(length, jnp.int32),
  )

  def mra_step(cache, q_t):
    return decode.attend_cached(cache, q_t, config=config)

  def dense_step(cache, q_t):
    written = jnp.arange(length) < cache.index
    return jax.nn.dot_product_attention(
      q_t, cache.key, cache.value, mask=written[None, None, None, :]
    )

  return mra_step, dense_step, (cache, q_t)


def _time(fn, args, repeats, budget, fwd_bwd=False):
  meas = _timing.measure(
    _timing.fwd_bwd(fn) if fwd_bwd else fn,
    args,
    repeats=repeats,
    max_temp_bytes=budget,
    max_call_seconds=math.inf,
  )
  if meas.status not in ("ok", "too_big"):
    raise RuntimeError(f"{fn} {meas.status}: {meas.error}")
  return meas.seconds, meas.temp_bytes


def decode_rows(lengths, repeats, budget):
  rows = []
  for length in lengths:
    for approx_mode in ("full", "sparse"):
      mra_step, dense_step, args = decode_programs(length, approx_mode)
      t_mra, m_mra = _time(mra_step, args, repeats, budget)
      t_dense, m_dense = _time(dense_step, args, repeats, budget)
      rows.append(
        dict(
          length=length,
          method="MRA-2" if approx_mode == "full" else "MRA-2-s",
          keys_read=decode.positions_read(_config(approx_mode), length),
          mra_seconds=t_mra,
          dense_seconds=t_dense,
          speedup=t_dense / t_mra if t_dense and t_mra else None,
          mra_temp_bytes=m_mra,
          dense_temp_bytes=m_dense,
        )
      )
      print(_row(rows[-1], "decode step"), flush=True)
  return rows


def prefill_rows(lengths, repeats, budget):
  rows = []
  for length in lengths:
    qkv = _timing.random_qkv((B, length, H, D))
    dense = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)
    for fwd_bwd in (False, True):
      t_dense, m_dense = _time(dense, qkv, repeats, budget, fwd_bwd)
      for approx_mode in ("full", "sparse"):
        config = _config(approx_mode)
        mra = lambda q, k, v, c=config: mra_jax.mra_attention(q, k, v, config=c)
        t_mra, m_mra = _time(mra, qkv, repeats, budget, fwd_bwd)
        rows.append(
          dict(
            length=length,
            method="MRA-2" if approx_mode == "full" else "MRA-2-s",
            pass_="fwd+bwd" if fwd_bwd else "fwd",
            mra_seconds=t_mra,
            dense_seconds=t_dense,
            speedup=t_dense / t_mra if t_dense and t_mra else None,
            mra_temp_bytes=m_mra,
            dense_temp_bytes=m_dense,
          )
        )
        print(_row(rows[-1], rows[-1]["pass_"]), flush=True)
  return rows


def _row(row, what):
  fmt = lambda t: "-" if t is None else f"{t * 1e3:.2f}"
  speed = f"{row['speedup']:.1f}x" if row["speedup"] else "dense does not fit"
  return (
    f"| {row['length']} | {what} | {row['method']} | {fmt(row['mra_seconds'])} | "
    f"{fmt(row['dense_seconds'])} | {speed} | {row['mra_temp_bytes'] / 2**20:.0f} | "
    f"{row['dense_temp_bytes'] / 2**20:.0f} |"
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--decode_lengths", default="16384,65536")
  parser.add_argument("--prefill_lengths", default="4096,16384")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="bench_out/causal")
  args = parser.parse_args(argv)
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  lengths = lambda text: [int(x) for x in text.split(",") if x]
  print(
    f"# Causal MRA vs dense causal attention, B={B} H={H} D={D} float32, block 32, "
    f"block_per_row=8, {jax.devices()[0].device_kind} x{os.cpu_count()}, jax {jax.__version__}"
  )
  print(
    "| L | pass | method | MRA (ms) | dense (ms) | speed-up | MRA temp (MiB) | dense temp (MiB) |"
  )
  print("|---|---|---|---|---|---|---|---|")
  decode_results = decode_rows(lengths(args.decode_lengths), args.repeats, ram // 2)
  prefill_results = prefill_rows(lengths(args.prefill_lengths), args.repeats, ram // 2)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "causal.json"), "w") as f:
    json.dump(
      dict(
        decode=decode_results,
        prefill=prefill_results,
        jax=jax.__version__,
        device=jax.devices()[0].device_kind,
        cores=os.cpu_count(),
      ),
      f,
      indent=1,
    )


if __name__ == "__main__":
  main()
