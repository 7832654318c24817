"""GraphQL root types and their resolvers: thin, typed, and calling services.

A resolver reads the typed :class:`~resolvers.context.Context`, checks who is calling, calls a
service or repository, and converts the result into a schema type. No business rules here.
"""
