"""Metrics, replay evaluation, pictures and reports shared by the capabilities and the demo."""
