"""The index: schema and store; every SQL statement of certdrop lives here."""
