"""Payload encryption: the AES-256-GCM codec, its keys, and the codec server for the Web UI."""
