"""Models: the GM wrapper, the VAD specialized model and the NetRoller adapter."""
