"""MLflow tracking of the commands' work: every training (``train``, and the trainings that
``demo``, ``tune`` and ``compare`` start) is one MLflow run; a search and a comparison are a
parent run with a child per trial / per method x seed; ``eval`` and ``export`` log to the run
of the training they read.

- ``settings.py``: where the runs go (``MLFLOW_TRACKING_URI``, else ``./mlflow.db``), the
  switch (``--no-tracking``, ``EDGE_RAY_TRACKING=0``), the run record beside the checkpoints.
- ``content.py``: what is logged (config -> params, epoch -> metrics, Table 3 -> metrics).
- ``client.py``: the MLflow client, run by one background thread on the driver: a command
  never waits for it and never fails because of it.
- ``commands.py``: a command's tracker (opened, closed with the command's status), and
  ``eval`` / ``export`` logging to the run of the training they read.
- ``ray_relay.py``: rank 0's epoch metrics from Ray Train's controller to the driver.
- ``ray_tune_callback.py``: a search's trials, from Ray Tune's driver-side callbacks.

Nothing here imports mlflow at import time; the command-line parsers import ``settings`` only.
"""
