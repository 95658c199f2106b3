"""jobs.result compressed with lz4 instead of pglz

A job's result (position, three ellipses with their polygons, the quality block) is about 3.6 kB
of JSON, above PostgreSQL's TOAST threshold, so every recorded result is compressed. With pglz
that compression cost about a quarter of PostgreSQL's CPU for a worker batch's two statements
(16 jobs: 3.25 ms against 2.5 ms with lz4). Values already stored keep their compression; a
server built without lz4, or older than PostgreSQL 14, keeps pglz.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_SET_COMPRESSION = """
DO $$
BEGIN
    ALTER TABLE jobs ALTER COLUMN result SET COMPRESSION {method};
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no % compression; job results keep pglz', '{method}';
END
$$
"""


def _per_column_compression() -> bool:
    """Whether the server can choose a column's compression (PostgreSQL 14 and later)."""
    version = op.get_bind().dialect.server_version_info or (0,)
    return int(version[0]) >= 14


def upgrade() -> None:
    if _per_column_compression():
        op.execute(_SET_COMPRESSION.format(method="lz4"))


def downgrade() -> None:
    if _per_column_compression():
        op.execute("ALTER TABLE jobs ALTER COLUMN result SET COMPRESSION pglz")
