"""CoffeePing token vault: encrypted Google OAuth grants and short-lived access tokens."""

SERVICE = "token-vault"
