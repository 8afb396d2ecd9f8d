"""``python -m trio_channel`` is ``trio-channel``."""

from .cli import main

raise SystemExit(main())
