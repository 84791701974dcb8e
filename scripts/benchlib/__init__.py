"""Helpers of scripts/bench.py: data sets, contenders, workloads, storm passthrough, plot."""
