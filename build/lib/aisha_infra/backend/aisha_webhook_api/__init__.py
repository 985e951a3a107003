"""Aisha Bot fal.ai webhook receiver: stores every fal delivery durably, once."""

SERVICE_NAME = "Aisha Bot FAL Webhook API"
__version__ = "1.0.0"
