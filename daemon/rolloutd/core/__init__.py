"""The pure core: events, windows, triggers, rollouts, engine.

Rules: nothing here does I/O, reads a clock or imports asyncio or a network library.
Every call that depends on time takes `now` (seconds) from the caller.
"""
