"""The livepix api: a Starlette app that validates, enqueues and streams task events.

Nothing here imports a model library (torch, diffusers, insightface, rembg).
"""
