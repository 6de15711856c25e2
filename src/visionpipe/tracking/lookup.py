"""Which registered model ``visionpipe predict`` and ``serve`` use by default. Only MLflow's client: none of the
registration machinery (pyfunc, signatures, the champion's re-scoring) that ``tracking.registry`` imports."""

from __future__ import annotations

from mlflow import MlflowClient


def default_model_uri(task: str, client: MlflowClient | None = None) -> str:
    """``models:/<name>@<alias>`` of the registered ``task`` model a run updated last (the champion of the data
    the user trained on latest): what ``visionpipe predict`` and serving use without an explicit model. Falls
    back to the built-in data's ``models:/visionpipe-<task>@champion`` when the store has none."""
    client = client or MlflowClient()
    candidates = []
    for found in client.search_registered_models(filter_string=f"tags.`visionpipe.task` = '{task}'"):
        model = client.get_registered_model(found.name)  # with its aliases
        alias = model.tags.get("visionpipe.alias", "champion")
        if alias in (model.aliases or {}):
            candidates.append((model.last_updated_timestamp or 0, model.name, alias))
    if not candidates:
        return f"models:/visionpipe-{task.replace('_', '-')}@champion"
    _, name, alias = max(candidates)
    return f"models:/{name}@{alias}"
