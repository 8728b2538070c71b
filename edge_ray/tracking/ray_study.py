"""Several trainings of one command in MLflow (``compare``: methods x seeds; ``demo``): a parent
run for the command, a child run per training -- its epochs brought to this driver by the relay
(``ray_relay.py``), its evaluation as metrics -- and the command's tables and plots as the
parent's artifacts.

The parent is recorded in the command's output folder and each child in its training's run
folder, so the same command run again (``compare --seeds 7`` after ``--seeds 5``, a rerun after
Ctrl-C) continues the same parent and the same children. A training reused from an earlier
call without a run in this store (trained untracked) gets a child with its config and its
evaluation, tagged ``edge.reused``.
"""
from __future__ import annotations

from edge_ray.tracking import settings
from edge_ray.tracking.client import TrackedRun, Tracker
from edge_ray.tracking.ray_relay import Relay


class StudyTracking:
    def __init__(self, tracker: Tracker, name: str, *, command: str, out: str, params: dict | None = None,
                 tags: dict | None = None):
        self.tracker, self.command = tracker, command
        self.relay = Relay(tracker)
        self.parent = tracker.run(name, params=params or {}, record=settings.record_location(out),
                                  tags={"edge.command": command, "edge.out": out,
                                        "mlflow.source.name": f"launch.py {command}", "mlflow.source.type": "LOCAL",
                                        **(tags or {})})
        self.children: dict[str, TrackedRun] = {}

    def _child(self, cfg) -> TrackedRun:
        from edge_ray.train.recipes import resolve_run

        run = self.children.get(cfg.train.run_name)
        if run is None:
            run = self.children[cfg.train.run_name] = self.tracker.training(resolve_run(cfg), self.command,
                                                                            parent=self.parent)
        return run

    def start(self, cfg) -> list:
        """The Ray Train callbacks of the training ``cfg`` (its child run starts now)."""
        return self.relay.callbacks(self._child(cfg))

    def done(self, cfg, result: dict | None = None, *, status: str = "FINISHED") -> None:
        """The training ended (its last epochs are on the queue: flushed first); ``result``: its
        evaluation (``evaluate()``'s dict), logged at the last epoch."""
        self.relay.flush()
        run = self._child(cfg)
        run.end(status)
        if result is not None:
            run.log_eval(result, step=cfg.train.epochs)

    def evaluated(self, cfg, result: dict) -> None:
        self._child(cfg).log_eval(result, step=cfg.train.epochs)

    def reused(self, cfg, result: dict | None) -> None:
        """A training finished by an earlier call: its run continues (or, untracked then, is made)."""
        run = self._child(cfg)
        run.set_tags({"edge.reused": "true"})
        self.done(cfg, result)

    def finish(self, files: list[str], metrics: dict | None = None) -> None:
        self.relay.flush()
        self.parent.log_files(files, None)
        if metrics:
            self.parent.log_metrics(metrics)
        self.parent.end("FINISHED")
