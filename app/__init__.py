"""The application layer: the command line and the flows, checks and engines behind it."""
