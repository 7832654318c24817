"""The git-synced catalogue of model configurations (see service.py and syncing.py)."""
