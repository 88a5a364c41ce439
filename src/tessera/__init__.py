"""Tessera: a trust broker for non-human identities.

The package is split so that a relying party can install only what it needs:
``tessera.verify`` (no-call-home verification) depends on ``cryptography`` and ``httpx`` alone;
the authorization server (``tessera.oauth``, ``tessera.store``, ``tessera.http``) comes with the
``server`` extra.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
