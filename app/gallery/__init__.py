"""1:N galleries: enrolled faces in a store (SQLite or PostgreSQL), searched exactly in memory.

- store.py: the tables, the change log, and how replicas follow it.
- index.py: the in-memory matrices and the search.
- service.py: enroll / identify / verify-subject / list / delete, on the service's encoder.
- threshold.py: identify's threshold, holding a false-positive identification rate at the
  gallery's size.
- routes.py: the HTTP routes (each with its key scope, app/auth.py).
- __main__.py: `python -m app.gallery reembed|stats|prune-log|backup|restore|erasures|purge`,
  the operator's commands.
"""
