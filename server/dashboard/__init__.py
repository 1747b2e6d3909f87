"""The edgefed dashboard: FastAPI API, SQLAlchemy persistence, run queue, live pages.

``serve(host, port, db_url, token, launch=[...])`` starts it (``edgefed dashboard``);
``create_app(settings)`` builds the ASGI app (tests, other servers).
"""
