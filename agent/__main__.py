"""python -m agent == navtalk-agent."""

import sys

from agent.apps.cli import main

sys.exit(main())
