"""Alembic environment: runs on the connection handed over by ``database.migrate``."""

from alembic import context

from inference_worker.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table_schema=context.config.attributes["schema"],
)
with context.begin_transaction():
    context.run_migrations()
