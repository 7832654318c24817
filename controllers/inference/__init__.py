"""The inference reconciler and the engine planner (what an inference runs, one pure function).

Where a workload runs is a runtime's business (:mod:`controllers.runtimes`). See
docs/architecture.md.
"""
