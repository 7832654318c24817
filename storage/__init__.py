"""MongoDB persistence: the client, typed documents and one thin async repository per collection.

MongoDB is the source of truth (docs/architecture.md decision 1). Every document carries a
``revision``; updates are compare-and-set on ``{_id, revision}`` with ``find_one_and_update``, so
two writers never silently overwrite each other; a read-modify-write goes through the one loop,
``Repository.modify`` (``collection.py``), with the one retry policy. ``documents.py`` holds the
stored shapes, ``targets.py`` the download target (one type per kind), ``repositories.py`` one
repository per collection. Only features FerretDB 1.x also implements are
used (CRUD, unique indexes, findAndModify, simple aggregation), so the same code runs on MongoDB
and on the test server. This package never imports strawberry or the GraphQL schema.
"""
