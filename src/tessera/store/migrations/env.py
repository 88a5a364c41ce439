"""Alembic environment: runs on the connection Tessera hands it (see ``tessera.store.sql.engine``)."""

from alembic import context

from tessera.store.sql.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tessera db upgrade`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
