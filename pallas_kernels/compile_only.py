"""Compile for real TPU and GPU targets on a machine that has neither.

JAX's compile-only clients run the real backend compilers without a device: libtpu's Mosaic and
XLA:TPU for a TPU topology, and XLA:GPU down to Triton, PTX and `ptxas` for an H100 (sm_90a).
What they catch is what a user would hit first on the hardware: VMEM overflow, shared-memory
limits, register spills, layouts a backend refuses, custom calls that cannot be partitioned.
What they cannot check is the numbers (races, numerics, speed): that needs the device.

    devices = compile_only.tpu_devices("v5e:2x2")          # or compile_only.h100_devices()
    x = jax.ShapeDtypeStruct(shape, dtype, sharding=SingleDeviceSharding(devices[0]))
    compiled = compile_only.compile(jax.jit(f).trace(x).lower())   # raises what it raises

Needs the `compile` extra (`pip install -e ".[compile]"`: libtpu, the CUDA 12 plugin and a
`ptxas`, pinned to the jax version they serve) and `JAX_PLATFORMS=cpu` before jax starts (with
the variable unset, the CUDA plugin looks for a driver, fails, and never registers; the test
suite's conftest sets it).
"""
# pylint: disable=invalid-name

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess

import jax
from jax.experimental import topologies

_TARGETS = pathlib.Path(__file__).parent / "targets"
INSTALL_HINT = 'pip install -e ".[compile]"'


def missing(platform: str) -> str | None:
  """Why compiling for `platform` ("tpu" or "cuda") cannot work here, or None if it can."""
  if platform not in ("tpu", "cuda"):
    raise ValueError(f"platform must be 'tpu' or 'cuda', got {platform=}")
  if jax.config.jax_platforms != "cpu":
    return (
      f"compile-only targets need JAX_PLATFORMS=cpu set before jax starts "
      f"(got {jax.config.jax_platforms!r})"
    )
  if platform == "tpu" and importlib.util.find_spec("libtpu") is None:
    return f"libtpu is not installed ({INSTALL_HINT})"
  if platform == "cuda":
    if importlib.util.find_spec("jax_cuda12_plugin") is None:
      return f"the jax CUDA 12 plugin is not installed ({INSTALL_HINT})"
    if ptxas_path() is None:
      return f"no ptxas found ({INSTALL_HINT} brings the nvidia-cuda-nvcc-cu12 wheel's)"
  return None


@functools.cache
def tpu_devices(topology: str = "v5e:2x2") -> tuple[jax.Device, ...]:
  """Compile-only devices of a TPU topology, e.g. "v5e:2x2", "v6e:2x2", "v5p:2x2x1".

  A single chip is written as the smallest host ("v5e:2x2"): libtpu refuses "v5e:1x1".
  """
  return tuple(topologies.get_topology_desc(topology, "tpu").devices)


@functools.cache
def h100_devices(topology: str = "1x1x1") -> tuple[jax.Device, ...]:
  """Compile-only NVIDIA H100 SXM devices: "1x1x1" is one GPU, "1x4x1" four on one host.

  An H200 has the same SM (sm_90a) and differs in memory size and bandwidth only, so code that
  compiles here compiles for it.
  """
  config = (_TARGETS / "h100_sxm.txtpb").read_text()
  desc = topologies.get_topology_desc(platform="cuda", topology=topology, target_config=config)
  return tuple(desc.devices)


def ptxas_path() -> str | None:
  """The `ptxas` XLA uses: the nvidia-cuda-nvcc wheel's, else one on PATH or in CUDA's home."""
  spec = importlib.util.find_spec("nvidia")
  for root in spec.submodule_search_locations if spec else ():
    candidate = pathlib.Path(root) / "cuda_nvcc" / "bin" / "ptxas"
    if candidate.exists():
      return str(candidate)
  return shutil.which("ptxas") or (
    "/usr/local/cuda/bin/ptxas" if os.path.exists("/usr/local/cuda/bin/ptxas") else None
  )


@dataclasses.dataclass(frozen=True)
class GpuKernel:
  """What ptxas and XLA's thunk sequence say about one GPU kernel of a compiled program.

  Attributes:
    name: the kernel's name (a Pallas kernel's `name=`).
    registers: registers per thread.
    spill_store_bytes / spill_load_bytes: local-memory spills per thread (0 for a clean kernel).
    shared_memory_bytes: dynamic shared memory per block, from XLA's launch.
    grid: launch grid (x, y, z).
    threads: threads per block (x, y, z).
    mma: the tensor-core instruction the PTX uses: "wgmma", "mma.sync" or "none" (FMA only).
  """

  name: str
  registers: int
  spill_store_bytes: int
  spill_load_bytes: int
  shared_memory_bytes: int
  grid: tuple[int, ...]
  threads: tuple[int, ...]
  mma: str


_PTXAS_FUNC = re.compile(r"Compiling entry function '([^']+)'")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_THUNK = re.compile(
  r"kCustomKernel .*?\] (\S+) grid: \[([\d, ]+)\] threads: \[([\d, ]+)\]\s+shared_memory: (\d+)"
)


# The backends' own optimisation defaults. A test suite may lower them through XLA_FLAGS to
# compile its many small CPU programs faster; what a real target compiles to (spills, VMEM,
# scoped memory) must be judged at the settings a user's program gets.
DEFAULT_OPTIMIZATION = {
  "xla_backend_optimization_level": 3,
  "xla_llvm_disable_expensive_passes": False,
}


def compile(lowered: jax.stages.Lowered, **compiler_options) -> jax.stages.Compiled:
  """`lowered.compile()` at the backend's default optimisation, whatever XLA_FLAGS says.

  Args:
    lowered: a program lowered for compile-only devices (or any other).
    **compiler_options: further XLA options (for example `xla_dump_to`).
  """
  return lowered.compile(compiler_options={**DEFAULT_OPTIMIZATION, **compiler_options})


def compile_with_kernel_report(
  lowered: jax.stages.Lowered, dump_dir: str, name_prefix: str = ""
) -> tuple[jax.stages.Compiled, list[GpuKernel]]:
  """Compiles `lowered` for its (compile-only) GPU and reports its kernels.

  XLA dumps the program's PTX and launch sequence into `dump_dir`; ptxas then runs once more
  with `-v` on each PTX file that defines a kernel named `name_prefix...`, which is where the
  register and spill counts come from (the same ptxas, flags and architecture XLA used).

  Args:
    lowered: `jax.jit(f).trace(*args).lower()` with args placed on `h100_devices()`.
    dump_dir: an empty directory for XLA's dump.
    name_prefix: report only kernels whose names start with this.

  Returns:
    The compiled program and one `GpuKernel` per launch of a matching kernel, in launch order.
  """
  compiled = compile(lowered, xla_dump_to=dump_dir)
  ptxas = ptxas_path()
  if ptxas is None:
    raise RuntimeError(f"no ptxas found: {INSTALL_HINT}")
  stats, mma = {}, {}
  for ptx in sorted(pathlib.Path(dump_dir).glob("*.ptx")):
    text = ptx.read_text()
    if f".entry {name_prefix}" not in text:
      continue
    out = subprocess.run(
      [ptxas, "-arch=sm_90a", "-v", "--warn-on-spills", str(ptx), "-o", os.devnull],
      capture_output=True,
      text=True,
      check=True,
    ).stderr
    names = _PTXAS_FUNC.findall(out)
    bodies = _PTXAS_FUNC.split(out)[2::2]
    for name, body in zip(names, bodies):
      spill, regs = _PTXAS_SPILL.search(body), _PTXAS_REGS.search(body)
      stats[name] = (int(regs.group(1)), int(spill.group(1)), int(spill.group(2)))
      mma[name] = "wgmma" if "wgmma" in text else "mma.sync" if "mma.sync" in text else "none"
  kernels = []
  for seq in sorted(pathlib.Path(dump_dir).glob("*thunk_sequence.txt")):
    for name, grid, threads, smem in _THUNK.findall(seq.read_text()):
      if name.startswith(name_prefix) and name in stats:
        regs, spill_st, spill_ld = stats[name]
        kernels.append(
          GpuKernel(
            name=name,
            registers=regs,
            spill_store_bytes=spill_st,
            spill_load_bytes=spill_ld,
            shared_memory_bytes=int(smem),
            grid=_ints(grid),
            threads=_ints(threads),
            mma=mma[name],
          )
        )
  return compiled, kernels


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(","))


@dataclasses.dataclass(frozen=True)
class CustomCall:
  """One custom call of a compiled program.

  Attributes:
    operands / results: shapes, e.g. "bf16[8,1024,64]".
    aliases: `(result index, operand index)` pairs of results written in place of an
      operand's buffer (a Pallas call's `input_output_aliases`).
  """

  operands: tuple[str, ...]
  results: tuple[str, ...]
  aliases: tuple[tuple[int, int], ...] = ()


_SHAPE = re.compile(r"[a-z]+\d*\[[\d,]*\]")
# One entry of HLO's `output_to_operand_aliasing={{0}: (8, {}), ...}`: result {index} (empty
# for a single result) and the operand it reuses.
_ALIAS = re.compile(r"\{(\d*)\}: \((\d+), \{[\d,]*\}\)")


def custom_calls(compiled: jax.stages.Compiled, target: str) -> list[CustomCall]:
  """Every custom call to `target` in the compiled, partitioned HLO of one device.

  For a sharded program these are the shapes each device's kernel sees, so a kernel that runs
  on its local batch shows the local shapes. `target` is "tpu_custom_call" (Mosaic) or
  "__gpu$xla.gpu.triton" (Pallas Triton).
  """
  calls = []
  for line in compiled.as_text().splitlines():
    if f'custom_call_target="{target}"' not in line:
      continue
    results = line.split("=", 1)[1].split("custom-call(", 1)[0]
    # Each operand ends with its layout's "}", so the set closes with "}}".
    operands = line.split("operand_layout_constraints={", 1)[1].split("}}", 1)[0]
    aliasing = ""
    if "output_to_operand_aliasing={" in line:
      # The map closes with the first ")}".
      aliasing = line.split("output_to_operand_aliasing={", 1)[1].split(")}", 1)[0] + ")"
    aliases = tuple((int(out or 0), int(operand)) for out, operand in _ALIAS.findall(aliasing))
    calls.append(
      CustomCall(tuple(_SHAPE.findall(operands)), tuple(_SHAPE.findall(results)), aliases)
    )
  return calls


def all_gathers(compiled: jax.stages.Compiled) -> int:
  """How many all-gather collectives the compiled program holds."""
  return sum(
    " all-gather(" in line or " all-gather-start(" in line
    for line in compiled.as_text().splitlines()
  )
