"""Stop cleanly when the scheduler says so: checkpoint at the end of the current step, then exit.

SIGTERM comes from Slurm preemption, `scancel`, `scontrol requeue` and torchrun shutting down;
SIGUSR2 is what submitit asks Slurm to send `signal_delay_s` before the time limit. The handler
only records the signal: the loop acts on it at a step boundary, where every rank agrees to stop
(the flag rides on the per-step all-reduce), so no collective is cut in half. After the
checkpoint, the signal goes on to whoever handled it before: submitit requeues the job on USR2
(rank 0) and ignores SIGTERM (Slurm requeues preempted jobs itself); with no handler before,
the process ends as the signal would have ended it.

Ctrl-C (SIGINT) stops the same way and exits with status 130. Once it has come, SIGINT and
SIGTERM get their default action back, so a second Ctrl-C ends the process at once, even in
the middle of a long C call (torchrun forwards a second Ctrl-C as SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, NoReturn

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class StopSignal:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may install handlers; such callers keep their own
        for sig in SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored
                self._previous[sig] = signal.signal(sig, self._record)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _record(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            for sig in (signal.SIGINT, signal.SIGTERM):  # the next one kills: "press Ctrl-C again to quit"
                if sig in self._previous:
                    signal.signal(sig, signal.SIG_DFL)
                    del self._previous[sig]  # and stays so after restore()
        if self.signum is None:  # the first signal decides how the run ends
            self.signum = signum

    def message(self, step: int, run_dir: Path, checkpointed: bool) -> str:
        """The line the run logs when it stops on the recorded signal."""
        saved = "checkpointed" if checkpointed else "not checkpointed (eval.checkpoint=none)"
        if self.signum == signal.SIGINT:
            return (
                f"Interrupted (Ctrl-C) after step {step}, {saved}: rerun with hydra.run.dir={run_dir} to continue "
                "from it."
            )
        return f"Stopping at step {step} on a preemption/time-limit signal, {saved}: resume=auto continues from it."

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def forward(self) -> NoReturn:
        """Deliver the recorded signal to the previous handler (call after checkpointing)."""
        assert self.signum is not None
        signum = self.signum
        if signum == signal.SIGINT:
            self.restore()
            raise SystemExit(128 + signum)  # 130, as a shell reports Ctrl-C; no traceback
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.restore()
        if callable(previous):
            previous(signum, None)  # submitit: requeue and sys.exit on rank 0; no-op elsewhere
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signum)
        raise SystemExit(128 + signum)
