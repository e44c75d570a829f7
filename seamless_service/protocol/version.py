"""Protocol version. Bump on any incompatible change to envelopes or op schemas."""

PROTOCOL_VERSION = 1
