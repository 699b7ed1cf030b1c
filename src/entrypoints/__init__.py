"""Entrypoints: settings, the composition root, the Sanic app and the command-line tool."""
