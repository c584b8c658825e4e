"""The front-end's engine: tasks, nodes and results around the hub, and what keeps them on disk."""
