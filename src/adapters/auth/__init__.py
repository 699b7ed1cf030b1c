"""Adapters for access control: the htpasswd user file, the rules file, failed-login memory, JWT tokens."""
