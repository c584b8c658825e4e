"""The front-end and its faces: SSH server, journal, result store, CLI and the Textual console."""
