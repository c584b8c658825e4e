"""The compute node: numpy kernels, worker processes, the SSH agent and the chain relay."""

from nodes import quick_libraries

quick_libraries.install()
