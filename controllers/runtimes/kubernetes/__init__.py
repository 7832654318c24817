"""The kubernetes runtime: download Jobs, inference Deployments, informers, cluster inventory."""
