"""runtime.setup() makes the process-wide settings; importing our modules makes none.

No fix to pynetdicom's requestor is needed any more: associations we request run on
:mod:`forwarder.scu`, one thread and one socket, so a response can be neither taken by
another thread nor missed (tests/test_scu_transport.py: a response that arrives before
the request is complete is read). pynetdicom's own association classes, used by the
acceptors of `receive` and of the tests, are left exactly as shipped.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_importing_changes_nothing_in_pynetdicom() -> None:
    """Only runtime.setup() changes process-wide state, and never pynetdicom's association
    machinery: importing the modules does nothing."""
    code = textwrap.dedent("""
        import logging, multiprocessing
        from pynetdicom import _config
        from pynetdicom.association import Association
        from pynetdicom.pdu_primitives import UserIdentityNegotiation
        from pynetdicom.transport import AssociationSocket
        before = (Association._run_reactor, AssociationSocket.recv,
                  UserIdentityNegotiation.from_primitive)
        import forwarder.association, forwarder.sender, forwarder.logs, forwarder.worker
        import forwarder.daemon, forwarder.receive, forwarder.scu
        assert not _config.STORE_SEND_CHUNKED_DATASET
        assert (Association._run_reactor, AssociationSocket.recv,
                UserIdentityNegotiation.from_primitive) == before
        assert logging.getLevelName(5) == "Level 5"
        assert not logging.getLogger("pynetdicom._handlers").filters
        assert multiprocessing.get_start_method(allow_none=True) is None
        import multiprocessing.forkserver as fs
        assert fs._forkserver._preload_modules == ["__main__"]
        from forwarder import runtime
        runtime.setup()
        assert logging.getLevelName(5) == "TRACE"
        assert (Association._run_reactor, AssociationSocket.recv,
                UserIdentityNegotiation.from_primitive) == before  # pynetdicom as shipped
        assert not _config.STORE_SEND_CHUNKED_DATASET  # our requestor sends files itself
        assert "forwarder.workerproc" in fs._forkserver._preload_modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
