"""Tollgate's shared package: what every service speaks.

The event contract, topic names, settings, the embedded broker and the ``tollgate`` CLI
live here. Services (``gateway``, ``stream``, ``analytics``) depend on this package and
never on each other.
"""

__version__ = "0.1.0"
