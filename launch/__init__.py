"""Entry points: training, data, export, inference and benchmarks."""
