"""Command-line tools and the library half of `train_small.py`: `python -m minimagen.tools.benchmark`,
`python -m minimagen.tools.memory`, the named training runs (run_presets) and their report."""
