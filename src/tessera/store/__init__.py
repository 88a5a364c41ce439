"""Persistence: narrow protocols (``interfaces``) and the SQLAlchemy implementation (``sql``)."""
