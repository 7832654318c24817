"""The transfer engine: the resumable, verified downloader, its sinks (local disk, S3) and the
rules for where weights may live and how they are removed. Runs in the server (local runtime)
and in a download Job's pod (``modelplane download``). See docs/architecture.md.

``downloader`` (files in parallel, retries), ``chunks`` (one file chunk by chunk), ``progress``
(the one progress record), ``sinks`` (the Sink protocol, the errors, the knobs),
``local_sink`` and ``s3_sink`` (the two targets), ``locations`` (where weights may live).
"""
