"""CoffeePing reply watcher: detects replies from Gmail thread metadata only."""

SERVICE = "reply-watcher"
