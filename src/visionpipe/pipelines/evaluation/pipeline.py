"""Evaluation pipeline."""

from kedro.pipeline import Node, Pipeline

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


def create_pipeline(**kwargs) -> Pipeline:
    out = []
    for t, (evaluate, outputs, plot, plot_inputs, plot_names) in _EVAL.items():
        out += [
            Node(evaluate, inputs=[f"{t}.model", f"{t}.clean_index", f"{t}.augmentation", f"params:{t}"],
                 outputs=[f"{t}.metrics", f"{t}.mlflow_metrics", *(f"{t}.{o}" for o in outputs)], name=f"{t}.evaluate",
                 tags=[t, "evaluation"]),
            Node(plot, inputs=[f"{t}.{i}" for i in plot_inputs], outputs=[f"{t}.plot_{p}" for p in plot_names],
                 name=f"{t}.plot", tags=[t, "evaluation"]),
        ]
    return Pipeline(out)
