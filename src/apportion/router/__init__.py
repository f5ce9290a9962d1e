"""Routing: read a query's features (intent, difficulty), then plan a ladder of strategies."""
