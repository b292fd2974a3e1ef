"""The index: every SQL statement of certdrop lives here.

schema (tables, version, migrations), store (the Store and its Transaction: certificates,
pending requests, journal, meta, control queue), mailqueue (the durable mail queue) and
warned (the record of expiry warnings).
"""
