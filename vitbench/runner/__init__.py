"""Running cases: one spawned worker process per case, a timeout, and an append-only result store."""
