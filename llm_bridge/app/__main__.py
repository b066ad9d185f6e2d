import sys

from llm_bridge.app.cli import main

sys.exit(main())
