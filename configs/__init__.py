"""Per-task LRA configs (`configs/<task>.py`) for `python -m lra.main --config=...`."""
