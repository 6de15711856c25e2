"""What the terminal shows: quiet by default, details with ``--verbose`` or VISIONPIPE_VERBOSE=1.

conf/logging.yml keeps Kedro's, kedro-mlflow's and MLflow's chatter at WARNING; this module holds what a
YAML logging file cannot do: MLflow's environment switches, a warnings filter, and the switch to verbose.
"""

from __future__ import annotations

import logging
import os
import re
import sys

VERBOSE_ENV = "VISIONPIPE_VERBOSE"
# the loggers conf/logging.yml keeps at WARNING; verbose lowers them to INFO
QUIET_LOGGERS = ("kedro", "kedro.io.data_catalog", "kedro.runner", "kedro.pipeline", "kedro.pipeline.node", "kedro.framework",
                 "kedro_mlflow", "mlflow", "alembic")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kedro-mlflow's own PythonModel subclass makes MLflow warn at import, inside MLflow's catch_warnings block
# (so no warnings filter reaches it); our pyfunc opts out of type-hint validation instead (serving/pyfunc.py).
DROPPED_WARNINGS = ("Add type hints to the `predict` method",)


def clean_warning(record: logging.LogRecord) -> bool:
    """Filter of the ``py.warnings`` logger: drop the warnings above, strip colour codes from the rest."""
    text = record.getMessage()
    if any(w in text for w in DROPPED_WARNINGS):
        return False
    if _ANSI.search(text):
        record.msg, record.args = _ANSI.sub("", text), ()
    return True


def install_defaults() -> None:
    """Quiet defaults, set before MLflow and Kedro are imported (both read them then): no artifact download
    bars, MLflow's own logger at WARNING, no "Using ... as logging configuration" line (e.g. in
    ``visionpipe --help``), and the warnings filter. Users' own environment variables win."""
    if verbose_requested():
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("kedro.framework.project").setLevel(logging.WARNING)
    warnings_logger = logging.getLogger("py.warnings")
    if clean_warning not in warnings_logger.filters:
        warnings_logger.addFilter(clean_warning)


def interactive() -> bool:
    """True when a person watches: stdout and stderr both terminals. Otherwise (``make run > run.log``, CI)
    no progress bars, and log lines are written whole rather than wrapped to 80 columns."""
    return all(stream is not None and hasattr(stream, "isatty") and stream.isatty() for stream in (sys.stdout, sys.stderr))


PLAIN_FORMAT = "[%(asctime)s] %(levelname)-8s %(message)s"
PLAIN_DATEFMT = "%m/%d/%y %H:%M:%S"


def plain_logs_when_piped() -> None:
    """When stdout is not a terminal, swap the root logger's Rich handlers (conf/logging.yml) for plain stream
    handlers with the same level and filters: one line per record, never wrapped at Rich's 80-column default,
    no padding. Kedro accepts only ``logging``/``kedro.logging`` classes in logging.yml, hence the swap here."""
    if interactive():
        return
    import rich.logging  # noqa: PLC0415  (imported by Kedro already; kept out of install_defaults' import path)

    root = logging.getLogger()
    for i, handler in enumerate(list(root.handlers)):
        if isinstance(handler, rich.logging.RichHandler):
            plain = logging.StreamHandler(sys.stdout)
            plain.setLevel(handler.level)
            plain.setFormatter(logging.Formatter(PLAIN_FORMAT, PLAIN_DATEFMT))
            for f in handler.filters:
                plain.addFilter(f)
            root.handlers[i] = plain
            handler.close()


def verbose_requested(flag: bool = False) -> bool:
    """``--verbose`` or VISIONPIPE_VERBOSE=1|true|yes|on."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_verbosity(verbose: bool) -> None:
    """Quiet: the levels of conf/logging.yml (or the user's KEDRO_LOGGING_CONFIG), with kedro-mlflow's and
    MLflow's loggers, which set their own level when imported, held at WARNING. Verbose: Kedro's,
    kedro-mlflow's and MLflow's INFO lines too (catalog loads and saves, node progress), and MLflow's
    download bars."""
    import kedro_mlflow  # noqa: F401  its import sets its logger to INFO: import first, then set the level

    plain_logs_when_piped()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true" if verbose and interactive() else "false"
    if not verbose:
        for name in ("kedro_mlflow", "mlflow"):
            logging.getLogger(name).setLevel(logging.WARNING)
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
    logging.getLogger("py.warnings").removeFilter(clean_warning)
