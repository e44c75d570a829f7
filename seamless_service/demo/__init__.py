"""Real demo services for a first look at seamless-service on one machine, no Seamless needed."""
