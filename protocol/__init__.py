"""What the front-end and the compute nodes agree on: pure code, no I/O."""
