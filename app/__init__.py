"""The member portal service: FastAPI over Postgres and Redis, instrumented for canary releases.

Run it with ``python -m app serve``; see app/README.md.
"""
