"""Accuracy as an ``evaluate`` metric module shipped with hf_deq, so that it loads offline by path:
``evaluate.load(hf_deq.training.packaged_metric_path("accuracy"))`` (``evaluate.load("accuracy")`` fetches
the module from the Hub). Same inputs and output as the Hub's ``accuracy``; needs no scikit-learn."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy is the proportion of correct predictions among the total number of cases processed:
(TP + TN) / (TP + TN + FP + FN)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    normalize (`bool`): if False, return the number of correctly classified samples. Defaults to True.
    sample_weight (`list` of `float`): sample weights. Defaults to None.
Returns:
    accuracy (`float` or `int`): in [0, 1] if `normalize` is True, else the (weighted) count of correct samples.
Examples:
    >>> accuracy_metric = evaluate.load("path/to/hf_deq/metrics/accuracy.py")
    >>> accuracy_metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0])
    {'accuracy': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(
                f"predictions and references differ in shape: {predictions.shape} vs {references.shape}"
            )
        correct = (predictions == references).astype(np.float64)
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            total = float((correct * weights).sum())
            return {"accuracy": total / float(weights.sum()) if normalize else total}
        if normalize:
            return {"accuracy": float(correct.mean()) if correct.size else 0.0}
        return {"accuracy": int(correct.sum())}
