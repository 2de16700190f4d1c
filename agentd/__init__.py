"""agentd: an LLM, a bash shell, a folder of markdown files, and a heartbeat."""

__version__ = "0.1.0"
