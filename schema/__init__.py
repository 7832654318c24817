"""GraphQL types, inputs, enums and result unions, and the function that builds the schema.

The root types (Query, Mutation, Subscription) live in ``resolvers``; the composition root
passes them to :func:`schema.building.build_schema`, so this package never imports resolvers.
Every type and field carries a description: GraphiQL is a user's first documentation.
"""
