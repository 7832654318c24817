"""The composition root: settings, logging, auth, the embedded database, the app and the CLI.

This is the only package that knows every other one; it builds the resources once at start-up
and hands them down. Lower layers never import it.
"""
