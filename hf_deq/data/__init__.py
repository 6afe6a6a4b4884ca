"""Data pipelines of the training tasks, independent of any model: image datasets (``images``), text datasets
(``text``) and the tokenizers trained on them (``tokenizers``); ``errors``: ``InputError``, what they raise on an
input a run cannot use (naming its argument)."""
