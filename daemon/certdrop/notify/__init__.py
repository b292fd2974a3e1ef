"""Notification: SMTP, the mail queue flush, the expiry sweep."""
