"""CoffeePing: shared code (``coffeeping.common``) and generated gRPC stubs (``coffeeping.<svc>.v1``)."""
