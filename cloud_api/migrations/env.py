"""Alembic's environment for the cloud's schema (cloud_api.db.metadata). The service runs it in-process
(cloud_api.schema.migrate) on the connection it already holds; there is no alembic.ini to configure."""

from __future__ import annotations

from alembic import context

from cloud_api.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
