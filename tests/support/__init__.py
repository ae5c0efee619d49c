"""Test-only tools: an independent DKIM verifier and real SMTP peers (recording sink, Postfix's smtp-sink)."""
