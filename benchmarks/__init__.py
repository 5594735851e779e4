"""Benchmark scripts: they print and plot numbers; they are not tests."""
