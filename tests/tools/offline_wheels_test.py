"""The offline wheel folder's checks, on folders of made-up wheels (no network)."""

import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tools import offline_wheels

_SETUP_CFG = """
[metadata]
name = my_pkg

[options]
install_requires =
    jax>=0.10
    # a comment line
    numpy

[options.extras_require]
lra =
    grain>=0.2  # trailing comment
    tqdm
test =
    my_pkg[lra]
    pytest>=8
"""


def _wheel(folder: Path, name: str, version: str, *requires: str) -> Path:
  path = folder / f"{name}-{version}-py3-none-any.whl"
  lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
  lines += [f"Requires-Dist: {r}" for r in requires]
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
  return path


def test_harness_roots_reads_requirements_and_the_lra_extra_only():
  roots = offline_wheels.harness_roots(_SETUP_CFG)
  # The project itself is left out, and so is the test extra: development tools such as
  # pytest and ruff do not run on the GPU machine.
  assert roots == ["jax>=0.10", "numpy", "grain>=0.2", "tqdm"]


def test_pinned_narrows_to_the_pin_and_refuses_one_out_of_range():
  pins = {"grain": "0.2.18"}
  assert str(offline_wheels.pinned(Requirement("Grain>=0.2"), pins)) == "Grain==0.2.18"
  assert str(offline_wheels.pinned(Requirement("tqdm>=4"), pins)) == "tqdm>=4"
  with pytest.raises(ValueError, match="outside"):
    offline_wheels.pinned(Requirement("grain>=0.3"), pins)


def test_the_pins_fit_setup_cfg():
  setup_cfg = (offline_wheels.REPO_ROOT / "setup.cfg").read_text()
  roots = [Requirement(r) for r in offline_wheels.harness_roots(setup_cfg)]
  for root in roots:
    offline_wheels.pinned(root, offline_wheels.PINS)  # Raises on a pin setup.cfg excludes.
  root_names = {r.name.lower().replace("_", "-") for r in roots}
  assert {"tensorflow-datasets", "grain", "array-record", "ml-collections"} <= root_names
  assert not {"ruff", "pytest", "pytest-xdist"} & root_names


def _complete_folder(folder: Path) -> list[str]:
  """A folder for roots `app` and `numpy` (preinstalled), closed under its requirements."""
  _wheel(folder, "app", "1.0", "lib>=2", "numpy", 'winonly; sys_platform == "win32"')
  _wheel(folder, "lib", "2.0", "helper", "absl-py")
  _wheel(folder, "helper", "0.3")
  return ["app", "numpy"]


def test_check_accepts_a_closed_folder(tmp_path):
  roots = _complete_folder(tmp_path)
  assert offline_wheels.check(tmp_path, roots, pins={"lib": "2.0"}) == []


def test_check_reports_a_missing_dependency(tmp_path):
  roots = _complete_folder(tmp_path)
  (tmp_path / "helper-0.3-py3-none-any.whl").unlink()
  (problem,) = offline_wheels.check(tmp_path, roots, pins={})
  assert "helper" in problem and "lacks it" in problem


def test_check_reports_two_versions_an_unneeded_wheel_and_an_image_package(tmp_path):
  roots = _complete_folder(tmp_path)
  _wheel(tmp_path, "helper", "0.4")
  _wheel(tmp_path, "stray", "1.0")
  _wheel(tmp_path, "numpy", "2.0")
  problems = offline_wheels.check(tmp_path, roots, pins={})
  assert "two wheels of helper" in problems
  assert "numpy is preinstalled on the image" in problems
  assert "stray-1.0-py3-none-any.whl is required by nothing" in problems


def test_check_reports_a_version_other_than_the_pin(tmp_path):
  roots = _complete_folder(tmp_path)
  assert offline_wheels.check(tmp_path, roots, pins={"lib": "2.1"}) == [
    "lib 2.0 is carried, pinned at 2.1"
  ]


def test_check_needs_the_metadata_of_an_image_package_whose_extras_are_required(tmp_path):
  _wheel(tmp_path, "app", "1.0", "etils[epath]")
  (problem,) = offline_wheels.check(tmp_path, ["app"], pins={})
  assert "etils" in problem
  metadata = tmp_path / offline_wheels.IMAGE_METADATA
  metadata.mkdir()
  (metadata / "etils.METADATA").write_text(
    "Name: etils\nVersion: 1.15\nRequires-Dist: extra-dep ; extra == 'epath'\n"
  )
  (problem,) = offline_wheels.check(tmp_path, ["app"], pins={})
  assert "extra-dep" in problem
  _wheel(tmp_path, "extra_dep", "1.0")
  assert offline_wheels.check(tmp_path, ["app"], pins={}) == []


def test_target_flags_ask_for_python_3_12_on_x86_64_linux():
  flags = offline_wheels.TARGET_FLAGS
  assert flags[flags.index("--python-version") + 1] == "3.12"
  platforms = [flags[i + 1] for i, f in enumerate(flags) if f == "--platform"]
  assert {"manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"} <= set(
    platforms
  )
  assert all(p.endswith("x86_64") for p in platforms)
