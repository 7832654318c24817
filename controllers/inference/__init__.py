"""The inference reconciler: read (``reconciler``) -> pure ``deciding.decide`` -> act -> write.

``workloads`` is the seam to the runtimes:
:class:`~controllers.inference.workloads.InferenceRuntime` (the API's view, built in every
replica) and
:class:`~controllers.inference.workloads.InferenceExecutor` (the leader's), one implementation
each in :mod:`controllers.runtimes.kubernetes.inference` and
:mod:`controllers.runtimes.local.inference`. ``engines`` plans what an inference runs (pure);
``routes`` probes a REMOTE_API model's route. See docs/architecture.md.
"""
