"""Publication: the CRL, Apache httpd's files, revocation."""
