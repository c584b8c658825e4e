"""Launchers: nodes started and kept for the operator — on SSH hosts, or as Slurm jobs.

They live in ``console/`` rather than ``nodes/`` because a launcher is a face of the
front-end, not part of a node: it enrols its node key with the front-end, scales by the
front-end's backlog and drains the front-end's nodes, all through ``FrontEndControl`` —
the FrontEnd's own API when the console runs the launcher (``--launch slurm:N``), the
operator's SSH command channel when ``chainconsole launch`` runs it as a process of its
own. The nodes it starts are plain ``chainconsole node`` processes and know nothing of it.
"""
