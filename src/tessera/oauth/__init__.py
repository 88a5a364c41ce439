"""The OAuth 2.0 protocol core: framework-free, storage behind narrow protocols.

Grants and endpoints are registered explicitly (see ``server.py``); errors are values with an RFC
error code (``errors.py``) that ``tessera.http`` renders.
"""
