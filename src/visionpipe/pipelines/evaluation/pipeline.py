"""Evaluation pipeline: evaluate, then plot; the task decides which outputs and figures there are."""

from kedro.pipeline import Node, Pipeline

from visionpipe.pipelines import for_task, per_task
from visionpipe.pipelines.evaluation.nodes import evaluate_model, plot_evaluation
from visionpipe.tasks import get_task_class


def _nodes(task: str) -> list[Node]:
    task_cls = get_task_class(task)
    outputs = list(task_cls.output_datasets)
    per_class = ["per_class"] if task_cls.per_class_metric else []
    return [
        Node(for_task(evaluate_model, task), inputs=["model", "clean_index", "augmentation", f"params:{task}"],
             outputs={name: name for name in ["metrics", "dvc_metrics", "evaluation_details", "mlflow_metrics", *per_class, *outputs,
                                              *(f"plot_{p}" for p in task_cls.evaluation_plots)]}, name="evaluate"),
        # figures from the saved outputs; those drawn from the evaluator's own state come from evaluate (no second COCOeval)
        Node(for_task(plot_evaluation, task), inputs=["clean_index", "training_history", *outputs],
             outputs={f"plot_{p}": f"plot_{p}" for p in task_cls.plot_names if p not in task_cls.evaluation_plots}, name="plot"),
    ]


def create_pipeline(**kwargs) -> Pipeline:
    return per_task("evaluation", _nodes)
