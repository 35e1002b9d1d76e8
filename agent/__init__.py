"""navtalk-agent: the core every process shares."""

__version__ = "0.1.0"
