"""The objects start-up created (imported libraries) are frozen out of Python's garbage collector, once per process."""

from __future__ import annotations

import gc

from kedro.framework.hooks import hook_impl


class FrozenStartupHook:
    """A run imports torch, torchvision, timm, MLflow and Kedro before its first node: about half a million
    objects that live until the process ends. Every full collection walks them, and so do the interpreter's
    collections at exit (1.7 s of a 2,000-image classification run on 2 cores, docs/benchmarks.md section 12).
    Before the first pipeline of a process, after a collection of the young generations (so recent garbage is
    not kept), ``gc.freeze()`` moves them to the collector's permanent generation, where no collection looks:
    the documented use of ``gc.freeze`` for objects that stay alive. Reference counting still frees whatever
    is released; only a reference cycle that was already garbage before the freeze stays in memory.

    Once per process (nothing frozen yet): a later session of the same process (``kedro run`` runs each task
    in its own) would otherwise freeze the previous run's garbage too."""

    @hook_impl
    def before_pipeline_run(self) -> None:
        if gc.get_freeze_count():
            return
        gc.collect(1)
        gc.freeze()
