"""Toy runtimes used by runtime-core's tests, packaged as a third-party plugin."""
