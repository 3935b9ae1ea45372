"""livepix: real-time AI image tasks. The shared core: wire contract, settings, store."""

__version__ = "0.1.0"
