"""The transfer engine: the resumable, verified downloader, its sinks (local disk, S3) and the
rules for where weights may live and how they are removed. Runs in the server (local runtime)
and in a download Job's pod (``modelplane download``). See docs/architecture.md.
"""
