"""autotelic: reinforcement learning in which the agent makes its own reward."""

__version__ = "0.1.0"
