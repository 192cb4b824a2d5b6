"""Authentication: passwords (Argon2id), TOTP, web sessions, API tokens, lockout."""
