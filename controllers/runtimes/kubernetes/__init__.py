"""The kubernetes runtime: the runtime itself (``runtime``), inference Deployments
(``inference``, ``manifests``, ``status``), download Jobs (``jobs``), informers, labels."""
