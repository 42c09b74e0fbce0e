"""1:N galleries: enrolled faces in a store (SQLite or PostgreSQL), searched exactly in memory.

- store.py: the tables, the change log, and how replicas follow it.
- index.py: the in-memory matrices and the search.
- service.py: enroll / identify / verify-subject / list / delete, on the service's encoder.
- routes.py: the HTTP routes.
- __main__.py: `python -m app.gallery reembed|stats`, the operator's commands.
"""
