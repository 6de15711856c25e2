"""Python's garbage collector and a run's start-up: the libraries a run imports (about half a million objects that
live as long as the process) are created under relaxed collection thresholds (``settings``), then frozen out of
the collector."""

from __future__ import annotations

import gc

from kedro.framework.hooks import hook_impl


class FrozenStartupHook:
    """Ends start-up's garbage-collection settings; one instance per process (``settings.HOOKS``).

    ``after_context_created``: Python's collection thresholds come back (``thresholds``: what they were before
    ``settings`` relaxed them for start-up's imports; once, so a user's own later change is kept).

    ``before_pipeline_run``: the objects start-up created move to the collector's permanent generation
    (``gc.freeze``), after a collection of the young generations so that recent garbage is not kept: no later
    full collection walks them, nor do the interpreter's collections at exit (1.7 CPU-s of a 2,000-image
    classification run on 2 cores). Reference counting still frees whatever is released; only a reference cycle
    that was garbage before the freeze stays in memory. Once per process (nothing frozen yet): a later session of
    the same process (``kedro run`` runs each task in its own) would otherwise freeze the previous run's garbage."""

    def __init__(self, thresholds: tuple[int, ...] | None = None):
        self._thresholds = thresholds

    @hook_impl
    def after_context_created(self) -> None:
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    @hook_impl
    def before_pipeline_run(self) -> None:
        if gc.get_freeze_count():
            return
        gc.collect(1)
        gc.freeze()
