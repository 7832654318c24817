"""Benchmark scripts (run as files: ``uv run python bench/<name>.py``); see README.md."""
