"""Built-in plugins, one module per method, each registered exactly like a third-party plugin."""
