"""CoffeePing accounts service: the user record, export, and account deletion."""

SERVICE = "accounts"
