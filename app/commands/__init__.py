"""The command side: HTTP gateway, command handlers, write-model store and the outbox relay."""
