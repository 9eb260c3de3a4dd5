"""rolloutd: event-driven progressive-delivery controller."""

import os

__version__ = "0.1.0"

if os.environ.get("ROLLOUTD_PURE") == "1":  # run the engine interpreted even where it is built
    from rolloutd.engine_build import prefer_source

    prefer_source()
