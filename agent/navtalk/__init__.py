"""The NavTalk v2 realtime protocol: sans-I/O core, events, history, settings."""
