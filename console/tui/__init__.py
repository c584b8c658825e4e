"""The operator console: a Textual app that reads front-end snapshots and calls its actions."""
