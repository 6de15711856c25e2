"""Under torchrun every rank runs the pipeline; only rank 0 writes files (and MLflow, see settings)."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from visionpipe.engine import distributed

logger = logging.getLogger(__name__)


class DistributedHook:
    """Joins torchrun's process group, and keeps the outputs of ranks > 0 in memory."""

    @hook_impl
    def after_context_created(self, context) -> None:
        distributed.init_from_env()

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        """Ranks > 0 replace only what the pipeline *writes*: its inputs are still read from disk (a stage
        pipeline such as ``--pipelines=training`` reads the index and augmentation rank 0 wrote earlier)."""
        if distributed.is_main_process():
            return
        for name in pipeline.all_outputs():
            catalog[name] = MemoryDataset()
        logger.info("Rank %d: pipeline outputs kept in memory; rank 0 writes them", distributed.rank())

    @hook_impl
    def after_pipeline_run(self) -> None:
        distributed.barrier()
