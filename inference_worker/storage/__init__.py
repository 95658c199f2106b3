"""Storage: PostgreSQL (record of truth) and Redis (capture blobs, results, result cache).

Only this package touches SQLAlchemy and Redis.
"""
