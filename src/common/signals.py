"""The signals that stop a run: SIGTERM, SIGINT, and SIGHUP (the terminal or ssh session of a nightly job
hung up), each reported as an interruption. A process started with SIGHUP ignored (``nohup``) keeps
ignoring it: its owner asked it to outlive the session. Read at import, before ``src.cli`` holds them."""

from __future__ import annotations

import signal
from typing import Final

_HUP_IGNORED: Final = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN

STOP_SIGNALS: Final[tuple[signal.Signals, ...]] = (
    signal.SIGTERM,
    signal.SIGINT,
    *(() if _HUP_IGNORED else (signal.SIGHUP,)),
)
