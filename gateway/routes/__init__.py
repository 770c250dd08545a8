"""The gateway's routes, one module per resource: health, calls, and the actions on a call."""
