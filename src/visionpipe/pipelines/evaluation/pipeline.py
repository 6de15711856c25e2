"""Evaluation pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe.pipelines import per_task
from visionpipe.pipelines.evaluation import nodes

# task -> (evaluate node, its task-specific outputs, plot node, plot inputs, plot names)
_EVAL = {
    "classification": (nodes.evaluate_classifier, ["predictions"], nodes.plot_classification,
                       ["predictions", "clean_index", "training_history"], ["confusion_matrix", "per_class_accuracy", "loss_curves"]),
    "detection": (nodes.evaluate_detector, ["predictions", "ground_truth"], nodes.plot_detection,
                  ["predictions", "ground_truth", "clean_index", "training_history"], ["pr_curves", "val_boxes", "loss_curves"]),
    "segmentation": (nodes.evaluate_segmenter, ["predicted_masks"], nodes.plot_segmentation,
                     ["predicted_masks", "clean_index", "training_history"], ["val_overlays", "loss_curves"]),
}


def _nodes(task: str) -> list[Node]:
    evaluate, outputs, plot, plot_inputs, plot_names = _EVAL[task]
    return [
        Node(evaluate, inputs=["model", "clean_index", "augmentation", f"params:{task}"],
             outputs=["metrics", "evaluation_timings", "mlflow_metrics", *outputs], name="evaluate"),
        Node(plot, inputs=plot_inputs, outputs=[f"plot_{p}" for p in plot_names], name="plot"),
    ]


def create_pipeline(**kwargs) -> Pipeline:
    return per_task("evaluation", _nodes)
