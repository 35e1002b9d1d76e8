"""One module per process: mic, session, speaker, display, tools."""
