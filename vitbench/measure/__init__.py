"""Measurements taken inside a worker: timing, numerics, FLOPs, memory, compile. Framework-neutral where possible."""
