"""Benchmarks: each prints numbers; none is a test."""
