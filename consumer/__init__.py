"""Order-completed events from Kafka, delivered effectively once to Nibble, Nudgify and Custobar."""
