"""The only code that speaks SMTP to clients: the aiosmtpd server, its handler and the named replies."""
