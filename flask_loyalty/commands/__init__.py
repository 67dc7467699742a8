"""The ``flask loyalty ...`` sub-commands, one module per area (imported by :mod:`flask_loyalty.cli`)."""
