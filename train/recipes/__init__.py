"""Training recipes: official hyper-parameters as dataclasses (one module per model family)."""
