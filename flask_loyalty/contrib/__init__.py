"""Optional integrations (Celery ...); each needs its extra installed."""
