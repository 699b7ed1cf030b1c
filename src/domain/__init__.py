"""The registry's domain: value objects, manifests, ports and use-cases. Imports nothing outside itself."""
