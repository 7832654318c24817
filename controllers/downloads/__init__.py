"""The download reconciler: moves a model's weights PENDING -> PULLING -> READY (or FAILED).

Where the worker runs is a runtime's business (:mod:`controllers.runtimes`); how bytes move is
the transfer engine's (:mod:`controllers.transfer`). See docs/architecture.md.
"""
