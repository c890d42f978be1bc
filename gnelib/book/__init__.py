"""What chapters import: set-up, ``ch.run`` (registered experiments through the store),
glue/record and the check helper."""
