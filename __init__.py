"""NetRoller: harvest a vision-language model's hidden states once, then train VAD + the NetRoller adapter from the cache."""

__version__ = "0.1.0"
