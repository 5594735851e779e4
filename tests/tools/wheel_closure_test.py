"""The requirement walk on made-up metadata: what gets carried, what the image provides."""

import zipfile

import pytest
from packaging.requirements import Requirement

from tools import wheel_closure
from tools.wheel_closure import Distribution


def _metadata(name, version, *requires):
  lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
  return "\n".join(lines + [f"Requires-Dist: {r}" for r in requires]) + "\n"


def test_parse_metadata_reads_name_version_and_requirements():
  dist = wheel_closure.parse_metadata(_metadata("Foo_Bar", "1.2", "baz>=1", 'qux; extra == "x"'))
  assert dist == Distribution("Foo_Bar", "1.2", ("baz>=1", 'qux; extra == "x"'))
  assert dist.key == "foo-bar"


def test_parse_metadata_rejects_metadata_without_version():
  with pytest.raises(ValueError, match="Version"):
    wheel_closure.parse_metadata("Metadata-Version: 2.1\nName: foo\n")


def test_wheel_metadata_text_reads_the_dist_info_metadata(tmp_path):
  wheel = tmp_path / "foo-1.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as archive:
    archive.writestr("foo/__init__.py", "")
    archive.writestr("foo-1.0.dist-info/METADATA", _metadata("foo", "1.0", "bar"))
    archive.writestr("foo-1.0.dist-info/licenses/METADATA", "not this one")
  assert wheel_closure.parse_metadata(wheel_closure.wheel_metadata_text(wheel)).requires == ("bar",)


def test_needed_requirements_evaluates_markers_for_the_target():
  dist = Distribution(
    "foo",
    "1",
    (
      "always",
      'old-python; python_version < "3.9"',
      'linux-only; platform_system == "Linux"',
      'windows-only; sys_platform == "win32"',
      'for-x; extra == "x"',
      'for-y; extra == "y"',
    ),
  )
  names = lambda reqs: [r.name for r in reqs]
  assert names(wheel_closure.needed_requirements(dist)) == ["always", "linux-only"]
  assert names(wheel_closure.needed_requirements(dist, ["X"])) == ["always", "linux-only", "for-x"]
  # Markers are the target's (Python 3.12), not this interpreter's.
  old = {**wheel_closure.TARGET_ENVIRONMENT, "python_version": "3.8"}
  assert "old-python" in names(wheel_closure.needed_requirements(dist, (), old))


# A small world: app needs lib (which needs helper) and the image's `util[fast]`, whose `fast`
# extra pulls in `speedups` and, through a self-reference, the extra `core`.
_WORLD = {
  "app": Distribution("app", "1.0", ("lib>=2", "util[fast]", "numpy")),
  "lib": Distribution("lib", "2.5", ("helper", 'unused; python_version < "3.0"')),
  "helper": Distribution("helper", "0.1", ("numpy",)),
  "util": Distribution(
    "util",
    "3.0",
    (
      "numpy",
      'speedups; extra == "fast"',
      'util[core]; extra == "fast"',
      'coredep; extra == "core"',
    ),
  ),
  "speedups": Distribution("speedups", "1.0", ()),
  "coredep": Distribution("coredep", "1.0", ()),
}


def _lookup_in(world, calls):
  def lookup(requirement: Requirement, carried: bool) -> Distribution:
    calls.append((requirement.name, carried))
    if requirement.name not in world:
      raise wheel_closure.UnresolvedError(f"no {requirement.name}")
    return world[requirement.name]

  return lookup


def test_resolve_carries_the_closure_and_stops_at_the_image():
  calls = []
  carried = wheel_closure.resolve(["app"], _lookup_in(_WORLD, calls), frozenset({"util", "numpy"}))
  assert sorted(carried) == ["app", "coredep", "helper", "lib", "speedups"]
  # The provided distribution is looked up once, only for its extras, and never carried.
  assert calls.count(("util", False)) == 1
  assert ("numpy", True) not in calls and ("numpy", False) not in calls


def test_resolve_without_the_extra_carries_less():
  world = {**_WORLD, "app": Distribution("app", "1.0", ("lib>=2", "util"))}
  carried = wheel_closure.resolve(["app"], _lookup_in(world, []), frozenset({"util", "numpy"}))
  assert sorted(carried) == ["app", "helper", "lib"]


def test_resolve_reports_a_missing_distribution():
  world = {k: v for k, v in _WORLD.items() if k != "helper"}
  with pytest.raises(wheel_closure.UnresolvedError, match="helper"):
    wheel_closure.resolve(["app"], _lookup_in(world, []), frozenset({"util", "numpy"}))


def test_resolve_reports_a_version_that_a_later_requirement_refuses():
  world = {**_WORLD, "helper": Distribution("helper", "0.1", ("lib<2",))}
  with pytest.raises(wheel_closure.UnresolvedError, match=r"helper 0\.1 needs lib<2, carried 2\.5"):
    wheel_closure.resolve(["app"], _lookup_in(world, []), frozenset({"util", "numpy"}))


def test_image_package_names_are_canonical():
  assert "pyyaml" in wheel_closure.GPU_IMAGE_PACKAGES
  assert "typing-extensions" in wheel_closure.GPU_IMAGE_PACKAGES
  # The harness's own data libraries are what the wheels are for: not on the image.
  assert not {"grain", "tensorflow-datasets", "array-record"} & wheel_closure.GPU_IMAGE_PACKAGES
