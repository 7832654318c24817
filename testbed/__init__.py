"""Real servers for the test suite and benchmarks, on loopback ports with their own temp dirs.

``servers`` starts FerretDB, etcd + kube-apiserver, MinIO, and a whole Kubernetes control plane
(adding kube-controller-manager, kube-scheduler and kwok's fake nodes, driven by
``kwok-stages.yaml``) from the binaries that ``deploy/testbed/build.sh`` builds; ``hub`` is a
faithful local stand-in for the Hugging Face Hub. Nothing here is shipped in the service's wheel.
"""
