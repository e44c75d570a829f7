"""The agent: runs on a server, answers batches of ops about remote-http-launcher state."""
