"""hf_deq model families: each subpackage registers its classes with the transformers Auto classes."""
