"""The local runtime: downloads as in-process tasks, engines as supervised subprocesses."""
