"""``python -m dropzone.simulator``: run the simulator until SIGTERM or SIGINT."""

from .cli import main

raise SystemExit(main())
