"""The HTTP surface: the app factory (`app`), one routes module per resource, schemas, auth, the fast path, the
dashboard. May import every other package of the service; nothing imports it (but `service.__main__`)."""
