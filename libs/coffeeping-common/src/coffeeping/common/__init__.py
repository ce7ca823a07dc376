"""Code shared by every CoffeePing service. It imports no service."""
