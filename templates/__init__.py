"""Jinja2 templates: web pages (pages/), document narratives (documents/) and static assets."""
