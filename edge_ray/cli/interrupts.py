"""Ctrl-C and SIGTERM for the long-running commands: stop within seconds, exit 130 (143
for SIGTERM) and print one line with the command that continues the work.

The command runs in a worker thread and the main thread only waits, holding the signal
handlers. That is deliberate: Ray Train registers its own SIGINT handler when ``fit()``
runs on the main thread (it aborts the run and exits with status 1, without a word), and
a signal handler can only run on the main thread. Leaving the process ends the run: a
local Ray's processes share its fate, and a cluster ends a job's actors when its driver
goes. What was written stays: checkpoints are complete folders (a half-uploaded one is
passed over on restore), results are written at the end of a command.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
GRACE_S = 15.0  # how long printing the hint may take before the process leaves anyway


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum, frame):
    raise Interrupted(signum)


# What must happen before an interrupted process leaves (MLflow runs end KILLED:
# edge_ray/tracking/commands.py); each hook bounds its own time, and a failing one is skipped.
_AT_INTERRUPT: list = []


def at_interrupt(hook) -> None:
    """Call ``hook(signum)`` when SIGINT / SIGTERM interrupts the command (before the hint)."""
    _AT_INTERRUPT.append(hook)


def forget_at_interrupt(hook) -> None:
    if hook in _AT_INTERRUPT:
        _AT_INTERRUPT.remove(hook)


def _run_interrupt_hooks(signum: int) -> None:
    for hook in list(_AT_INTERRUPT):
        try:
            hook(signum)
        except Exception:  # noqa: BLE001 - the interrupt goes on
            pass


def run_interruptible(command, args, *, hint) -> int:
    """``command(args)`` in a worker thread; on SIGINT / SIGTERM print ``hint(args)`` and
    return 130 / 143. Exceptions of the command are raised here, in the main thread."""
    outcome: dict = {}
    interrupted = threading.Event()

    def target():
        had_ray = _ray_connected()
        try:
            outcome["rc"] = command(args)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = err
        finally:
            if not had_ray and not interrupted.is_set():  # interrupted: the process is leaving
                # A Ray this thread started must stop before the thread ends: Ray starts its
                # raylet and GCS with PR_SET_PDEATHSIG, which fires when the starting *thread*
                # exits, so they would be SIGKILLed, and the interpreter's own ray.shutdown()
                # would then wait on timeouts talking to them.
                _stop_ray()

    worker = threading.Thread(target=target, name=f"launch-{args.command}", daemon=True)
    previous = {s: signal.signal(s, _raise) for s in EXIT_CODES}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    except Interrupted as stop:
        code = EXIT_CODES[stop.signum]
        interrupted.set()
        _leave_soon(code)
        _run_interrupt_hooks(stop.signum)
        # Ray is not shut down from here: ray.shutdown() while the command thread waits inside
        # a Ray call aborted the process (SIGABRT, no message) in 4 of 5 SIGTERMs mid-epoch.
        # Leaving is enough: a local Ray's processes die with this one, and a cluster ends the
        # job's actors when its driver goes.
        print(f"\ninterrupted ({stop}): {hint(args)}", file=sys.stderr, flush=True)
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["rc"]


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _stop_ray() -> None:
    """Disconnect from Ray if this process uses it (a command that never imported Ray does
    not import it now): a local instance stops, a cluster ends this driver's job (its Train
    controller and workers with it)."""
    if not _ray_connected():
        return
    try:
        sys.modules["ray"].shutdown()
    except Exception:  # noqa: BLE001 - leaving anyway
        pass


def _leave_soon(code: int) -> None:
    """Leave within GRACE_S whatever the caller does next (launch.py leaves at once)."""
    def watchdog():
        time.sleep(GRACE_S)
        sys.stderr.flush()
        os._exit(code)

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()


def again(argv: list[str], extra: tuple[str, ...] = ()) -> str:
    """``python launch.py <argv>`` (plus ``extra`` flags not given yet), as the user can type it."""
    return shlex.join(["python", "launch.py", *argv, *(a for a in extra if a not in argv)])
