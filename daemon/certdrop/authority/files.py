"""The CA's file names in the state folder (no cryptography here: `certdrop backup` and
other short-lived commands name the files without loading it)."""

CA_KEY = "ca.key"
CA_CERT = "ca.cer"
CA_CHAIN = "chain.pem"
CHAIN_CRLS = "chain-crls"  # CRLs of the CAs above this one (root-crl, or the operator)
ROOT_CRL_FILE = "root.crl"  # the offline root's CRL in CHAIN_CRLS
