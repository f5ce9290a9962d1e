"""The OpenAI-compatible HTTP server (`apportion serve`): `app.create_app(settings)` builds it.

Needs the `server` extra (FastAPI, uvicorn, sse-starlette, prometheus-client); nothing here is
imported by the rest of the package.
"""
