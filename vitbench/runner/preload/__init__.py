"""What a fork server imports before it forks workers (``runner.launch``): imports only. Nothing here may run a
tensor op, touch CUDA, start a thread or do TensorFlow/JAX work: none of that survives a fork."""
