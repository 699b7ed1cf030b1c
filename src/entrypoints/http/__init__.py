"""The Sanic entrypoint: it translates HTTP into use-case calls and back, nothing more."""
