"""Reconcile loops, the work queue and the runtimes that execute downloads and inference.

Controllers are level-triggered (docs/architecture.md decision 4). This package may import
``storage`` and ``integrations`` but never ``resolvers`` or ``schema``.
"""
