"""The compute node: numpy kernels, worker processes, the SSH agent and the chain relay."""
