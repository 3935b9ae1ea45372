"""The Dramatiq side of livepix: actors, the worker process, and the model engines.

Nothing here imports Starlette; the api never imports this package's engines.
"""
