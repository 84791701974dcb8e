"""Helpers of scripts/bench.py: data sets, contenders, workloads, storm passthrough, the
shared-filesystem scenario, report, plot."""
