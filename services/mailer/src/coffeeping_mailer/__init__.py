"""CoffeePing mailer: contacts, sequences, sending through Gmail, follow-up drafts."""

SERVICE = "mailer"
