"""Getting data back: a logical restore into a database, point-in-time recovery into a folder."""
