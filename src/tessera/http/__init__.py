"""The ASGI application: the only package that knows the web framework."""
