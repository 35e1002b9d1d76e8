"""A child of the supervisor dies with it, set up by the child itself.

The supervisor does not use ``preexec_fn`` (CPython documents it as unsafe in a process
with threads, and the supervisor has ZeroMQ's): it passes its pid in
``NAVTALK_PARENT_PID`` and the child, first thing, asks the kernel for SIGKILL when its
parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that the parent is still the one
it was started by: a parent that died before the ``prctl`` would never send the signal.
"""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["PARENT_ENV", "die_with_parent"]

PARENT_ENV = "NAVTALK_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(environ: dict[str, str] | None = None) -> bool:
    """Arm PDEATHSIG when started by a supervisor; exit at once if it is gone already.
    Returns True when armed. The variable is removed so a grandchild does not inherit it."""
    env = os.environ if environ is None else environ
    expected = env.pop(PARENT_ENV, "")
    if not expected.isdigit():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM still reaches us
        return False
    if os.getppid() != int(expected):  # the parent died before the prctl: no signal will come
        os._exit(1)
    return True
