"""What the accounts service stores (schema ``accounts``; DDL in ``migrations/``)."""

from sqlalchemy import Column, DateTime, MetaData, Table, Text

metadata = MetaData(schema="accounts")

users = Table(
    "users",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
