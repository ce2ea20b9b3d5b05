"""Running cases: spawned worker processes (set-up jobs, timing sessions) with timeouts, paired rounds, the run
directory and the result store."""
