"""The SSH shell that the front-end, chain links, node agents and the CLI share.

One way to open a connection (``client``), one gated server (``server``), one way to move
protocol messages over a channel (``channel``). Everything SSH-specific that both ends must
agree on is defined here, once.
"""

NODE_SUBSYSTEM = "chainconsole-node"
"""The SSH subsystem a node opens to speak the node protocol."""
NODE_USERNAME = "node"
"""The user name nodes log in with; a refused key under this name is listed as pending."""
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes256-ctr")
"""AES-GCM first: the fastest cipher asyncssh offers on common hardware."""
MAX_PACKET = 256 * 1024
WINDOW = 16 * 1024 * 1024
"""Large packets and a large window keep array payloads flowing on fast links."""
