"""The behaviour of flask_loyalty, usable without a request (CLI, Celery, tests)."""
