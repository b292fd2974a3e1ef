"""Issuance: the batch state machine, decisions (policy), recording, outcomes, delivery."""
