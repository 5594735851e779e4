"""Which wheels a machine needs, given what it already has: the requirement walk.

Pure logic, no network: the walk asks a `lookup` callable for each distribution's metadata, so
the same walk downloads wheels (tools.offline_wheels) or checks a folder of them offline.
"""

from __future__ import annotations

import dataclasses
import email.parser
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The GPU machines' image: Python 3.12 on x86-64 Linux. Markers are evaluated for it, not for
# the machine that runs the download.
TARGET_ENVIRONMENT: Mapping[str, str] = {
  "implementation_name": "cpython",
  "implementation_version": "3.12.3",
  "os_name": "posix",
  "platform_machine": "x86_64",
  "platform_python_implementation": "CPython",
  "platform_release": "",
  "platform_system": "Linux",
  "platform_version": "",
  "python_full_version": "3.12.3",
  "python_version": "3.12",
  "sys_platform": "linux",
}

# Distributions the GPU machines' image already holds (its package list, names as pip spells
# them). Their versions are the image's: a carried wheel must never replace one.
GPU_IMAGE_PACKAGES: frozenset[str] = frozenset(
  canonicalize_name(name)
  for name in """
  absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
  botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
  coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
  diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
  frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
  hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
  jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
  lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
  mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
  ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
  nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
  nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
  nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
  opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
  pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
  psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
  pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
  pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
  scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
  shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
  tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
  torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
  treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
  wheel wrapt xarray xxhash yarl zipp
  """.split()
)


@dataclasses.dataclass(frozen=True)
class Distribution:
  """One distribution's name, version and `Requires-Dist` lines, as its METADATA gives them."""

  name: str
  version: str
  requires: tuple[str, ...]

  @property
  def key(self) -> str:
    return canonicalize_name(self.name)


def parse_metadata(text: str) -> Distribution:
  """Reads a core-metadata file (a wheel's `*.dist-info/METADATA`)."""
  message = email.parser.HeaderParser().parsestr(text)
  name, version = message.get("Name"), message.get("Version")
  if not name or not version:
    raise ValueError(f"metadata without Name or Version: {text[:200]!r}")
  return Distribution(name, version, tuple(message.get_all("Requires-Dist") or ()))


def wheel_metadata_text(wheel: Path) -> str:
  """The METADATA file inside a wheel, as text."""
  with zipfile.ZipFile(wheel) as archive:
    names = [
      n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
    ]
    if len(names) != 1:
      raise ValueError(f"wheel={wheel} holds {len(names)} top-level METADATA files, not one")
    return archive.read(names[0]).decode("utf-8")


def needed_requirements(
  dist: Distribution,
  extras: Iterable[str] = (),
  environment: Mapping[str, str] = TARGET_ENVIRONMENT,
) -> list[Requirement]:
  """The requirements of `dist` that apply on `environment` when installed with `extras`."""
  wanted_extras = ("", *sorted({canonicalize_name(e) for e in extras}))
  needed = []
  for line in dist.requires:
    requirement = Requirement(line)
    marker = requirement.marker
    if marker is None or any(marker.evaluate({**environment, "extra": e}) for e in wanted_extras):
      requirement.marker = None
      needed.append(requirement)
  return needed


class UnresolvedError(Exception):
  """The walk found requirements that neither the carried wheels nor the image satisfy."""


# lookup(requirement, carried): the Distribution that satisfies `requirement`. `carried` is False
# for a distribution the image already holds, whose metadata is wanted only for its extras.
Lookup = Callable[[Requirement, bool], Distribution]


def resolve(
  roots: Iterable[str],
  lookup: Lookup,
  provided: frozenset[str] = GPU_IMAGE_PACKAGES,
  environment: Mapping[str, str] = TARGET_ENVIRONMENT,
) -> dict[str, Distribution]:
  """Walks the requirements from `roots` and returns what must be carried, by canonical name.

  A requirement on a `provided` distribution stops the walk there, except for its extras: those
  pull in further distributions (`etils[epath]` needs `importlib_resources`), so the provided
  distribution's metadata is looked up with `carried=False`.

  Raises:
    UnresolvedError: a carried distribution's version does not meet a later requirement on it.
  """
  carried: dict[str, Distribution] = {}
  described: dict[str, Distribution] = {}  # provided ones, looked up only for their extras
  extras_walked: dict[str, set[str]] = {}
  conflicts = []
  pending = [(Requirement(root), "(root)") for root in roots]
  while pending:
    requirement, wanted_by = pending.pop(0)
    key = canonicalize_name(requirement.name)
    is_provided = key in provided
    extras = {canonicalize_name(e) for e in requirement.extras}
    if is_provided and not extras:
      continue
    known = described if is_provided else carried
    if key not in known:
      known[key] = lookup(requirement, not is_provided)
      extras_walked[key] = set()
      new_extras = extras | {""}
    else:
      new_extras = extras - extras_walked[key]
      if not is_provided and not requirement.specifier.contains(
        known[key].version, prereleases=True
      ):
        conflicts.append(f"{wanted_by} needs {requirement}, carried {known[key].version}")
    if is_provided:
      new_extras.discard("")  # the image's own dependencies are the image's business
    if not new_extras:
      continue
    extras_walked[key] |= new_extras
    dist = known[key]
    base = {str(r) for r in needed_requirements(dist, (), environment)}
    for needed in needed_requirements(dist, new_extras - {""}, environment):
      if "" in new_extras or str(needed) not in base:
        pending.append((needed, f"{dist.name} {dist.version}"))
  if conflicts:
    raise UnresolvedError("version conflicts:\n  " + "\n  ".join(conflicts))
  return carried
