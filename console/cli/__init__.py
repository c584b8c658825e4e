"""The ``chainconsole`` command line."""
