"""The bundled reference backend, shipped as package data and uploaded to the host as the
app (this file is not: see tasks/app.py). The app itself is the aisha_webhook_api package."""
