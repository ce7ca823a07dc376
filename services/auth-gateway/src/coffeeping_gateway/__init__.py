"""CoffeePing auth gateway: the only public HTTP entry."""

SERVICE = "auth-gateway"
