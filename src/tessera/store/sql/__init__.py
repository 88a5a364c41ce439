"""The SQLAlchemy 2 implementation of the storage contracts (SQLite and PostgreSQL)."""
