"""Notification: mail to certificate holders and to the admin.

smtp (messages and the SMTP transport), queue (into the durable queue), mailer (the
queue to the server), alerts (to the admin), passwords (the p12 password by mail),
expiry (the expiry sweep) and messages (the sweep's texts).
"""
