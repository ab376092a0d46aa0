"""DigitalOcean function entry points: ``packages/<pkg>/<fn>/__main__.py`` hands ``(event, context)`` here."""
