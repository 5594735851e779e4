r"""Wheels for a GPU machine that has no network: download them here, carry the folder there.

The GPU machines run Python 3.12 on x86-64 Linux with jax, flax, optax, orbax and much else
preinstalled (`wheel_closure.GPU_IMAGE_PACKAGES`), but not the LRA harness's data and config
libraries. This script walks setup.cfg's requirements (install_requires and the `lra` extra: what
runs there, the device check and the harness; no test or development tools), and downloads, for that target rather than for this machine, every wheel the image
lacks, following each wheel's `Requires-Dist` until everything is carried or preinstalled. A
distribution published only as a pure-Python sdist (promise) is built into a wheel here.

  python -m tools.offline_wheels download   # on a machine with network; fills .whl/
  python -m tools.offline_wheels check      # offline: is .whl/ closed under its requirements?
  python -m tools.offline_wheels stamp      # only rewrite .whl/source_stamp.txt

Besides the wheels, the folder holds `source_stamp.txt` (tools.source_stamp: the commit and
whether the tree was dirty) and `image_metadata/`, the METADATA of preinstalled distributions
whose extras are required (so that `check` needs no network). docs/gpu.md has the install line.
"""

from __future__ import annotations

import argparse
import configparser
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tools import source_stamp, wheel_closure

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / ".whl"
IMAGE_METADATA = "image_metadata"
# What the GPU machine runs: the library and the harness. The `test` extra (pytest, ruff) is
# for development machines only.
EXTRAS = ("lra",)

# The harness's libraries at the versions the CPU test suite runs with. tensorflow-metadata
# (imported by tensorflow_datasets) is held at 1.17.2: its generated code predates protobuf's
# runtime version check and loads under protobuf 5, 6 and 7 alike, whereas 1.21 refuses any
# protobuf before 6. The image's protobuf version is the image's, so the wheel must fit it.
# Anything not pinned takes its newest release that fits the target.
PINS = {
  "array-record": "0.8.6",
  "grain": "0.2.18",
  "ml-collections": "1.1.0",
  "tensorboardx": "2.6.5",
  "tensorflow-datasets": "4.9.10",
  "tensorflow-metadata": "1.17.2",
}

# pip matches manylinux_2_N tags one by one; the image's glibc is newer than all of these.
_PLATFORMS = (
  *(f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)),
  "manylinux2014_x86_64",
  "manylinux2010_x86_64",
  "manylinux1_x86_64",
)
TARGET_FLAGS = (
  "--only-binary=:all:",
  "--python-version",
  "3.12",
  "--implementation",
  "cp",
  "--abi",
  "cp312",
  *(flag for platform in _PLATFORMS for flag in ("--platform", platform)),
)


def harness_roots(setup_cfg: str) -> list[str]:
  """The requirements of setup.cfg's install_requires and `EXTRAS`, less the project itself."""
  config = configparser.ConfigParser()
  config.read_string(setup_cfg)
  own_name = canonicalize_name(config["metadata"]["name"])
  lines = config["options"]["install_requires"].splitlines()
  for extra in EXTRAS:
    lines += config["options.extras_require"][extra].splitlines()
  roots = {}
  for line in filter(None, (line.split("#")[0].strip() for line in lines)):
    key = canonicalize_name(Requirement(line).name)
    if key != own_name:
      roots.setdefault(key, line)
  return list(roots.values())


def pinned(requirement: Requirement, pins: dict[str, str]) -> Requirement:
  """`requirement` narrowed to its pin, if `pins` holds one.

  Raises:
    ValueError: the pin falls outside what `requirement` allows.
  """
  pin = pins.get(canonicalize_name(requirement.name))
  if pin is None:
    return requirement
  if not requirement.specifier.contains(pin, prereleases=True):
    raise ValueError(f"pin {requirement.name}=={pin} is outside the requirement {requirement}")
  return Requirement(f"{requirement.name}=={pin}")


def _pip(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "pip", *args, "--no-deps", "--quiet", "--disable-pip-version-check"],
    capture_output=True,
    text=True,
  )


def fetch_wheel(requirement: Requirement, folder: Path) -> Path:
  """Downloads the target's wheel for `requirement` into `folder`, or builds a pure-Python one.

  Raises:
    RuntimeError: pip found neither a wheel for the target nor a pure-Python sdist.
  """
  spec = f"{requirement.name}{requirement.specifier}"
  with tempfile.TemporaryDirectory() as scratch:
    done = _pip("download", *TARGET_FLAGS, "--dest", scratch, spec)
    if done.returncode != 0:
      # No wheel for the target: build one from the sdist, and keep it only if pure Python.
      built = _pip("wheel", "--no-binary", requirement.name, "--wheel-dir", scratch, spec)
      if built.returncode != 0:
        raise RuntimeError(f"no wheel and no sdist build for {spec}:\n{done.stderr}{built.stderr}")
    (wheel,) = Path(scratch).glob("*.whl")
    tags = parse_wheel_filename(wheel.name)[3]
    if done.returncode != 0 and not all(t.abi == "none" and t.platform == "any" for t in tags):
      raise RuntimeError(f"{spec} built into {wheel.name}, which is not pure Python")
    folder.mkdir(parents=True, exist_ok=True)
    return Path(wheel.replace(folder / wheel.name))


def _downloading_lookup(dest: Path, pins: dict[str, str]):
  metadata_dir = dest / IMAGE_METADATA

  def lookup(requirement: Requirement, carried: bool) -> wheel_closure.Distribution:
    if carried:
      wheel = fetch_wheel(pinned(requirement, pins), dest)
      print(f"  {wheel.name}  ({wheel.stat().st_size / 1e6:.2f} MB)", flush=True)
      return wheel_closure.parse_metadata(wheel_closure.wheel_metadata_text(wheel))
    # Preinstalled: only its METADATA is kept, for the extras it declares.
    with tempfile.TemporaryDirectory() as scratch:
      text = wheel_closure.wheel_metadata_text(fetch_wheel(requirement, Path(scratch)))
    metadata_dir.mkdir(parents=True, exist_ok=True)
    (metadata_dir / f"{canonicalize_name(requirement.name)}.METADATA").write_text(text)
    return wheel_closure.parse_metadata(text)

  return lookup


def _folder_lookup(dest: Path):
  wheels = {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in dest.glob("*.whl")}

  def lookup(requirement: Requirement, carried: bool) -> wheel_closure.Distribution:
    key = canonicalize_name(requirement.name)
    path = wheels.get(key) if carried else dest / IMAGE_METADATA / f"{key}.METADATA"
    if path is None or not path.exists():
      raise wheel_closure.UnresolvedError(f"{requirement} is required, and {dest} lacks it")
    text = wheel_closure.wheel_metadata_text(path) if carried else path.read_text()
    return wheel_closure.parse_metadata(text)

  return lookup, wheels


def check(dest: Path, roots: list[str], pins: dict[str, str] = PINS) -> list[str]:
  """Problems with the wheels in `dest` (empty when complete): missing, extra, duplicated, or
  at another version than `pins` asks for."""
  lookup, wheels = _folder_lookup(dest)
  names = [canonicalize_name(parse_wheel_filename(w.name)[0]) for w in dest.glob("*.whl")]
  problems = [f"two wheels of {n}" for n in sorted({n for n in names if names.count(n) > 1})]
  problems += [
    f"{n} is preinstalled on the image" for n in wheels if n in wheel_closure.GPU_IMAGE_PACKAGES
  ]
  try:
    carried = wheel_closure.resolve(roots, lookup)
  except wheel_closure.UnresolvedError as error:
    return [*problems, str(error)]
  problems += [f"{wheels[n].name} is required by nothing" for n in wheels if n not in carried]
  problems += [
    f"{dist.name} {dist.version} is carried, pinned at {pins[key]}"
    for key, dist in carried.items()
    if key in pins and dist.version != pins[key]
  ]
  return problems


def download(dest: Path, roots: list[str], pins: dict[str, str] = PINS) -> None:
  """Empties `dest` of wheels, then downloads the closure of `roots` (with `pins`) into it."""
  for stale in [*dest.glob("*.whl"), *dest.glob(f"{IMAGE_METADATA}/*.METADATA")]:
    stale.unlink()
  print(f"downloading into {dest}:", flush=True)
  wheel_closure.resolve(roots, _downloading_lookup(dest, pins))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tools.offline_wheels", description=__doc__)
  parser.add_argument(
    "action", choices=("download", "check", "stamp"), nargs="?", default="download"
  )
  parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="wheel folder (.whl/)")
  parser.add_argument(
    "--pin", action="append", default=[], metavar="NAME==VERSION", help="add or override a pin"
  )
  args = parser.parse_args(argv)
  pins = dict(PINS)
  for text in args.pin:
    name, sep, version = text.partition("==")
    if not sep or not name or not version:
      parser.error(f"--pin={text!r} is not NAME==VERSION")
    pins[canonicalize_name(name)] = version
  roots = harness_roots((REPO_ROOT / "setup.cfg").read_text())
  if args.action == "download":
    download(args.dest, roots, pins)
  if args.action in ("download", "stamp"):
    print("stamp:", source_stamp.write_stamp(REPO_ROOT, args.dest))
  if args.action in ("download", "check"):
    problems = check(args.dest, roots, pins)
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 1e6:.1f} MB in {args.dest}")
    for problem in problems:
      print("PROBLEM:", problem)
    return 1 if problems else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
