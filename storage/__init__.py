"""MongoDB persistence: the client, typed documents and one thin async repository per collection.

MongoDB is the source of truth (ARCHITECTURE.md decision 1). Every document carries a
``revision``; updates are compare-and-set on ``{_id, revision}`` with ``find_one_and_update``, so
two writers never silently overwrite each other. Only features FerretDB 1.x also implements are
used (CRUD, unique indexes, findAndModify, simple aggregation), so the same code runs on MongoDB
and on the test server. This package never imports strawberry or the GraphQL schema.
"""
