"""Intake: the inbox (watchdog), request parsing, the spool's folders, claims."""
