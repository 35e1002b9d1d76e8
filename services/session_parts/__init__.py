"""Thin asyncio shells the session service (:mod:`services.session`) is built from: the
connection and its signaling relay, the tool relay, the mic relay."""
