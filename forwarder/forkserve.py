"""Imported by the ``multiprocessing`` fork server alone (its preload), never elsewhere.

systemd stops the service by sending SIGTERM to every process of its control group at
once. The fork server is the parent of the workers: if it died of that SIGTERM, every
worker would look dead (status 255) to the daemon before the workers had finished their
C-STORE in flight. It ignores SIGTERM instead and ends when the daemon does (end of file
on its pipe from the daemon); each worker sets its own SIGTERM handler first thing.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
