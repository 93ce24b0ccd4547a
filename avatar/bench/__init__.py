"""Speed benchmarks (``python -m avatar.bench ...``): each prints a Markdown table of measured figures."""
