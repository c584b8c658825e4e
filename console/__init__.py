"""The front-end and its faces: SSH server, journal, result store, CLI and the Textual console."""

import nodes  # noqa: F401  (first: its import hook makes asyncssh load quickly)
