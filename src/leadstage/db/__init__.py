"""Database models and the unit of work shared by every service."""
