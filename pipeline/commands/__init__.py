"""One module per ``hemaflow`` subcommand; each defines ``register(subparsers)``."""
