"""Use cases the resolvers call: tenancy and role checks, validation, repository calls.

Sits between ``resolvers`` (GraphQL) and ``controllers``/``storage``: it never imports
strawberry, and every method takes the calling :class:`~services.principals.Principal` so
that scoping to the caller's organisation cannot be forgotten.
"""
