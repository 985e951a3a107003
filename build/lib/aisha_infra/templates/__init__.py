"""The Jinja templates of the deploy, shipped as package data: <dir>/<file>.j2 renders
the file of that name on the host (see aisha_infra/deploy/rendering.py)."""
