"""One builder per runtime: the runtime object and everything that differs between runtimes.

The composition root (:func:`modelplane.graph.open_resources`) picks the builder once, from
``settings.runtime``; nothing else asks which runtime it holds. Each builder
(:class:`~modelplane.runtimes.kubernetes.KubernetesParts`,
:class:`~modelplane.runtimes.local.LocalParts`) satisfies
:class:`~modelplane.runtimes.base.RuntimeParts`: the secret store, the download executor, the
inference executor and the namespace of its runtime. They live here, not in
``controllers/runtimes``, because they read :class:`~modelplane.settings.Settings` (controllers
must not import ``modelplane``)."""
