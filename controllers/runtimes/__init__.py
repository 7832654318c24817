"""The two runtimes, one place each: ``kubernetes`` (Jobs, Deployments, informers, Secrets)
and ``local`` (in-process downloads, supervised engine subprocesses). See docs/architecture.md.
"""
