"""The local runtime: the runtime itself (``runtime``), engines as supervised subprocesses
(``inference``, ``processes``, ``specs``, ``supervision``, ``logfiles``); downloads run as
in-process tasks of the download controller."""
