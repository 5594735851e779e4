"""Tests `pallas_kernels/compile_only.py` on small Pallas kernels of known shape."""

import functools
import tempfile

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels import compile_only


def _add_one_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...] + 1.0


def _add_one(x, compiler_params, block, in_place=False):
  return pl.pallas_call(
    _add_one_kernel,
    out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
    grid=(x.shape[0] // block,),
    in_specs=[pl.BlockSpec((block, x.shape[1]), lambda i: (i, 0))],
    out_specs=pl.BlockSpec((block, x.shape[1]), lambda i: (i, 0)),
    compiler_params=compiler_params,
    input_output_aliases={0: 0} if in_place else {},
    name="probe_add_one",
  )(x)


def test_rejects_unknown_platform():
  with pytest.raises(ValueError, match="platform='rocm'"):
    compile_only.missing("rocm")


@pytest.mark.usefixtures("cuda_compile")
def test_h100_kernel_report_reads_ptxas_and_launch():
  x = jax.ShapeDtypeStruct(
    (256, 64), jnp.float32, sharding=SingleDeviceSharding(compile_only.h100_devices()[0])
  )
  fn = functools.partial(_add_one, compiler_params=pltriton.CompilerParams(num_warps=2), block=32)
  with tempfile.TemporaryDirectory() as dump:
    compiled, kernels = compile_only.compile_with_kernel_report(
      jax.jit(fn).trace(x).lower(), dump, name_prefix="probe_"
    )
  (kernel,) = kernels
  assert kernel.name == "probe_add_one"
  assert kernel.grid == (8, 1, 1)
  assert kernel.threads == (64, 1, 1)  # 2 warps
  assert 0 < kernel.registers <= 255
  assert (kernel.spill_store_bytes, kernel.spill_load_bytes) == (0, 0)
  assert kernel.mma == "none"  # no dot in this kernel
  (call,) = compile_only.custom_calls(compiled, "__gpu$xla.gpu.triton")
  assert call.operands == ("f32[256,64]",) and call.results == ("f32[256,64]",)


@pytest.mark.usefixtures("tpu_compile")
def test_tpu_custom_calls_show_each_devices_shard():
  devices = compile_only.tpu_devices("v5e:2x2")
  assert len(devices) == 4
  mesh = jax.sharding.Mesh(devices, ("data",))
  x = jax.ShapeDtypeStruct((512, 128), jnp.float32, sharding=NamedSharding(mesh, P("data")))
  fn = functools.partial(_add_one, compiler_params=pltpu.CompilerParams(), block=64)
  # Mosaic kernels are not partitioned automatically: a shard_map runs each on its shard.
  sharded = jax.shard_map(fn, mesh=mesh, in_specs=P("data"), out_specs=P("data"), check_vma=False)
  compiled = compile_only.compile(jax.jit(sharded).trace(x).lower())
  (call,) = compile_only.custom_calls(compiled, "tpu_custom_call")
  assert call.operands == ("f32[128,128]",)
  assert compile_only.all_gathers(compiled) == 0


@pytest.mark.usefixtures("tpu_compile")
@pytest.mark.parametrize("in_place", [False, True])
def test_tpu_custom_calls_show_results_written_in_place(in_place):
  device = compile_only.tpu_devices("v5e:2x2")[0]
  x = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=SingleDeviceSharding(device))
  fn = functools.partial(
    _add_one, compiler_params=pltpu.CompilerParams(), block=64, in_place=in_place
  )
  compiled = compile_only.compile(jax.jit(fn).trace(x).lower())
  (call,) = compile_only.custom_calls(compiled, "tpu_custom_call")
  assert call.aliases == (((0, 0),) if in_place else ())
