"""The index: every SQL statement of certdrop lives here.

schema (tables, version, migrations), store (the Store and its Transaction: the engine,
the certificates' write path, CRL numbers, meta), listing (the certificates' lookups,
listings, counts and CRL entries), pending (requests waiting for approval), journal
(what happened to each request), mailqueue (the durable mail queue), warned (the record
of expiry warnings), outputs (the delivered files), control (operator commands for a
running daemon) and migrate (a whole index copied into another database). SQLite by
default; PostgreSQL for an index several hosts share.
"""
