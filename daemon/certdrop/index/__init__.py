"""The index: every SQL statement of certdrop lives here.

schema (tables, version, migrations), store (the Store and its Transaction: certificates,
pending requests, journal, meta), mailqueue (the durable mail queue), warned (the record
of expiry warnings), outputs (the delivered files), control (operator commands for a
running daemon) and migrate (a whole index copied into another database). SQLite by
default; PostgreSQL for an index several hosts share.
"""
