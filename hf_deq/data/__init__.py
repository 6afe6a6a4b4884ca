"""Data pipelines of the training tasks, independent of any model: image datasets (``images``), text datasets
(``text``) and the tokenizers trained on them (``tokenizers``)."""
