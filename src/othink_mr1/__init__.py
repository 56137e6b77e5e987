"""OThink-MR1: SFT and GRPO with a dynamic KL schedule (GRPO-D) for vision-language models."""

__version__ = "0.1.0"
