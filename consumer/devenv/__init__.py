"""Local development environment: a real Kafka broker, a PostgreSQL server, sample orders."""
