"""A small text file that records which commit a copied tree came from.

A copy of the working tree sent to another machine has no `.git`, so it cannot say which commit
its code is. The stamp, written next to the wheels that travel with it, can. The format and its
reader and writer belong to `lra.provenance` (which also reads the stamp into every run's
results.json); this module keeps the names the wheel tool uses.
"""

from lra.provenance import (  # noqa: F401 (re-exported)
  STAMP_NAME,
  format_stamp,
  git_state,
  parse_stamp,
  read_stamp,
  write_stamp,
)
