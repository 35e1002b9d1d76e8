"""What a person runs: the ``navtalk-agent`` command and its subcommands, the supervisor
(with its zygote and start-up checks), the demo, tap, record/replay, topics and the console.

The rest of :mod:`agent` is libraries; nothing there imports from here.
"""
