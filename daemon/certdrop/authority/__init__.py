"""The authority: the CA, DER encoding, keys and PKCS#12, lint, the signing workers."""
